"""Defaults shared by every recipe; recipe files override what they change.

python train.py --config=configs/kaggle_dr.py:b5 --config.data.batch_size=16
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.variant = arg or "b0"
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    config.data.data_dir = ""  # the builder's output folder (local or gs://)
    config.data.image_size = 0  # 0: the manifest's image size
    config.data.batch_size = 32  # global; thesis CIFAR batch 32 (B5: 8)
    config.data.eval_batch_size = 64
    config.data.shuffle_buffer = 2048
    config.data.interleave_cycle = 8
    config.data.cache = ""  # "", "memory" or a file path: caches the encoded records
    config.data.deterministic = False  # True: same order and augmentation for a seed
    # Train crop: "reference" = sample_distorted_bounding_box with the ImageNet recipe
    # (tensorflow/tpu preprocessing.py: min cover 0.1, aspect 3/4-4/3, area 0.08-1);
    # "fundus" keeps most of the disc; "none" resizes the whole image.
    config.data.train_crop = "reference"
    config.data.crop_area_range = (0.08, 1.0)
    config.data.crop_aspect_range = (3.0 / 4.0, 4.0 / 3.0)
    config.data.crop_min_object_covered = 0.1
    config.data.horizontal_flip = True
    # Eval: centre crop of size/(size+32) (tensorflow/tpu preprocessing.py CROP_PADDING = 32);
    # 1.0 keeps the whole image (the builder already cropped the fundus).
    config.data.eval_crop_fraction = 224.0 / 256.0
    # "model": pixels in [0, 255] for the model's in-model normalisation; or a preset name
    # from effdr_tf.constants.NORMALIZATION_PRESETS for models built with normalization="none".
    config.data.normalization = "model"
    config.data.verify_shards = "size"  # "size" (cheap, at start-up), "sha256" or "none"
    config.data.skip_corrupt = False  # True: skip unreadable records (eval counts them)

    config.augment = ml_collections.ConfigDict()
    config.augment.name = "randaugment"  # or "none"
    config.augment.num_layers = 2  # N (tensorflow/tpu default)
    config.augment.magnitude = 10.0  # M (tensorflow/tpu default; B5 recipe 17, B7 28)
    config.augment.magnitude_std = 0.0
    config.augment.weights = "reference"  # "uniform" (with Identity) or "thesis"
    config.augment.custom_weights = ml_collections.config_dict.placeholder(dict)  # {op: weight}
    config.augment.max_magnitude = 30.0
    config.augment.fill_value = 128  # tensorflow/tpu autoaugment.py replace value

    config.balance = ml_collections.ConfigDict()
    config.balance.target = "natural"  # see effdr_tf/pipeline/balance.py; "explicit": shares
    config.balance.shares = ml_collections.config_dict.placeholder(tuple)
    config.balance.multipliers = ml_collections.config_dict.placeholder(tuple)
    config.balance.final_target = ml_collections.config_dict.placeholder(str)
    config.balance.transition_examples = 0
    return config
