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

    config.model = ml_collections.ConfigDict()
    config.model.num_classes = 0  # 0: the manifest's
    # "softmax" (thesis), "regression" (one output: the grade) or "ordinal" (CORN, K-1
    # conditional outputs); see effdr_tf/models/heads.py. Every head gives class probabilities.
    config.model.head = "softmax"
    config.model.weights = ""  # a checkpoint path (any format models.efficientnet reads)
    config.model.reinit_head = True  # ImageNet heads have 1000 classes
    config.model.normalization = "auto"  # what the weights expect
    config.model.dropout_rate = -1.0  # < 0: the variant's (tensorflow/tpu efficientnet_builder)
    config.model.drop_connect_rate = 0.2  # tensorflow/tpu efficientnet_builder.py
    config.model.bn_momentum = 0.99  # tensorflow/tpu: batch_norm_momentum 0.99; < 0: auto by
    # steps per epoch (recipes.bn_momentum: 0.99 unless an epoch has under 400 steps)
    config.model.bn_epsilon = 1e-3  # tensorflow/tpu: batch_norm_epsilon 1e-3
    # Batch statistics across replicas (the reference's TPU cross-replica BN); with it a
    # multi-replica step equals a single-device step on the same global batch. None (auto): on
    # for several replicas on one host (TPU, mirrored GPUs), off across machines, where its
    # three all-reduces per BN layer per pass cross the network (B5: 116 BN layers). Measured on
    # one host (2 logical CPU devices, B0 at 64 px, batch 16): x1.01-1.23 the step time of
    # per-replica BN (benchmarks/distributed_step.py).
    config.model.sync_batch_norm = ml_collections.config_dict.placeholder(bool)

    # Self-training (a Noisy Student student): pseudo-labelled shards written by
    # effdr_tf.selftrain.pseudo_labels, mixed into every training batch.
    config.selftrain = ml_collections.ConfigDict()
    config.selftrain.pseudo_dir = ""  # "": off
    config.selftrain.pseudo_fraction = 0.5  # expected share of each batch from pseudo_dir
    config.selftrain.soft = True  # softmax head: cross-entropy against the teacher's probabilities
    # The student's noise in self_train.py: "recipe" keeps this config's dropout, stochastic
    # depth and RandAugment; "paper" sets Noisy Student's (Xie et al. 2020, sec. 3: dropout 0.5
    # on the final layer, stochastic depth survival 0.8 at the last block, RandAugment N=2) and
    # keeps the recipe's magnitude (see effdr_tf/selftrain/rounds.py PAPER_NOISE).
    config.selftrain.noise = "recipe"

    config.train = ml_collections.ConfigDict()
    config.train.epochs = 10
    config.train.steps_per_epoch = 0  # 0: training examples // global batch
    config.train.optimizer = "adam"  # rmsprop, adam, sgd
    config.train.learning_rate = 1e-4
    # "linear" or "sqrt": learning_rate is per 256 images, scaled by batch/256 or its square
    # root (recipes.base_learning_rate); "none": the rate as it is.
    config.train.lr_scaling = "none"
    config.train.warmup_epochs = 0.0
    config.train.schedule = "constant"  # exponential, step, plateau, constant
    config.train.decay_epochs = 2.0
    config.train.decay_rate = 0.5
    config.train.staircase = True
    config.train.plateau_patience = 2
    config.train.plateau_factor = 0.5
    config.train.momentum = 0.9
    config.train.rho = 0.9
    config.train.epsilon = 1e-7
    config.train.rms_starts_at_one = False  # TF1 RMSProp semantics
    config.train.weight_decay = 0.0  # L2 term weight_decay * sum(w^2) / 2, non-BN weights
    config.train.label_smoothing = 0.0  # softmax head only
    config.train.regression_loss = "mse"  # regression head: "mse" or "smooth_l1" (Huber, delta 1)
    config.train.class_weights = ml_collections.config_dict.placeholder(tuple)
    config.train.allow_double_correction = False
    config.train.ema_decay = 0.0  # 0: off
    config.train.ema_warmup = True
    config.train.freeze_bn = False
    config.train.freeze_backbone_epochs = 0
    config.train.unfreeze_stages_per_epoch = 0  # after the frozen epochs; 0: all at once
    config.train.mixed_precision = "auto"  # auto, float32, mixed_float16, mixed_bfloat16
    # None (auto): XLA on GPUs of one machine and on TPU; off on CPU, where it is ~6x slower
    # (benchmarks/), and across machines, where TensorFlow's XLA all-reduce cannot reach other
    # hosts (True is refused there; effdr_tf/training/distribute.py PER_DEVICE_DEFAULTS).
    config.train.jit_compile = ml_collections.config_dict.placeholder(bool)
    # Steps per host call; 0 (auto): 100 on TPU (a host loop in one tf.function), 1 elsewhere.
    config.train.steps_per_execution = 0
    # Gradient accumulation: each update's global batch (data.batch_size) goes through the
    # model in this many equal parts, one at a time, for memory that holds only one part's
    # activations (B5 at 456 px on one 11-16 GB card: 4-8 images). The optimizer, EMA, loss
    # scale and learning-rate schedule advance once per update; batch-norm batch statistics
    # (and moving averages) are per part.
    config.train.accumulation_steps = 1
    # float16: stop a run whose updates are skipped this many times in a row for non-finite
    # gradients (or whose loss scale falls below 1), instead of skipping every later step.
    config.train.max_skipped_steps = 50
    config.train.checkpoint_every_steps = 500
    config.train.keep_checkpoints = 3
    # The input position in checkpoints (one device only; exact resume). It holds the shuffle
    # buffer's encoded records: at 456 px and data.shuffle_buffer=2048 a B0 checkpoint grows
    # from 48.5 MB to 183 MB on synthetic_dr (benchmarks/host_step.py; real photographs
    # compress less), and a few are kept and rewritten every 500 steps. None (auto): with
    # train.deterministic, which asks for exact resumes; otherwise a resumed run reads a
    # stream reshuffled by the step, as multi-device runs always do.
    config.train.checkpoint_input = ml_collections.config_dict.placeholder(bool)
    config.train.validation_split = "validation"
    config.train.best_metric = "kappa"  # kappa, accuracy or loss
    config.train.log_every_steps = 50
    config.train.export = True  # model.keras and a SavedModel at the end
    config.train.deterministic = False  # op determinism + deterministic input: exact resumes
    return config


def paper_imagenet_recipe(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The EfficientNet paper's ImageNet recipe (tensorflow/tpu main.py and utils.py)."""
    t = config.train
    t.optimizer = "rmsprop"
    t.rho = 0.9  # RMSProp decay 0.9
    t.momentum = 0.9
    t.epsilon = 1e-3  # inside the sqrt, as TF1
    t.rms_starts_at_one = True  # TF1 RMSProp initialises the mean square at 1
    t.learning_rate = 0.016  # per 256 images (0.256 at batch 4096)
    t.lr_scaling = "linear"
    t.warmup_epochs = 5.0
    t.schedule = "exponential"
    t.decay_epochs = 2.4
    t.decay_rate = 0.97
    t.staircase = True
    t.weight_decay = 1e-5  # L2 on non-BN weights
    t.label_smoothing = 0.1
    t.ema_decay = 0.9999
    t.ema_warmup = True
    t.epochs = 350
    config.model.weights = ""
    config.data.train_crop = "reference"
    config.data.eval_crop_fraction = 224.0 / 256.0
    return config


def thesis_dr_finetune_recipe(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The thesis's DR fine-tuning of B5 Noisy-Student (thesis appendix 5.1)."""
    t = config.train
    t.optimizer = "adam"
    t.learning_rate = 1e-4
    t.epsilon = 1e-7
    t.weight_decay = 1e-5  # Adam weight decay 1e-5 (coupled L2, as PyTorch's Adam)
    t.schedule = "step"
    t.decay_epochs = 2.0
    t.decay_rate = 0.5  # lr x0.5 every 2 epochs
    t.epochs = 40
    t.ema_decay = 0.0
    config.data.batch_size = 8
    config.data.eval_batch_size = 16
    config.data.train_crop = "fundus"
    config.data.eval_crop_fraction = 1.0  # shards are already cropped to the fundus disc
    return config


# The TPU recipes' global batch: 64 images, what a v3-8 TPU VM takes at 8 images on each of
# its 8 TensorCores (8 devices), and a v4-8 at 16 on each of its 4 devices (a v4 chip's two
# TensorCores act as one device, "megacore"; Cloud TPU docs, TPU v4). The thesis's batch of 8
# would put one image on each v3 core: batch statistics over one image and cores that mostly
# wait.
TPU_IMAGES_PER_CORE = 8  # v3-8 (16 per device on a v4-8)
TPU_CORES = 8  # a v3-8's TensorCores
# Adaptive optimizers, whose rate follows the batch by the square root (below).
ADAPTIVE_OPTIMIZERS = ("adam", "rmsprop")
# Warm-up added to a recipe that has none when the TPU batch raises its rate. The scaling rules
# come with a gradual warm-up (Goyal et al. 2017, sec. 2.2: 5 epochs of 90 on ImageNet; the
# EfficientNet recipe: 5 of 350). One epoch here, at most 549 steps of 64 (Kaggle 2015 has
# 35,126 training images before the validation split): the thesis schedule halves the rate
# every 2 epochs counted from step 0 (recipes.LearningRate, as tensorflow/tpu), so a ramp past
# epoch 2 would never reach the full rate; one epoch leaves a full epoch at it before the first
# halving.
TPU_WARMUP_EPOCHS = 1.0


def tpu_recipe(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Scales a recipe to a TPU VM: the global batch fills the cores and the learning rate
    follows the batch.

    A recipe that states its rate per 256 images (``lr_scaling`` "linear" or "sqrt") keeps it
    and its rule: the EfficientNet paper's (``paper_imagenet_recipe``) is RMSProp at 0.016 per
    256 images, scaled linearly, with 5 warm-up epochs, as published for batch 4096
    (tensorflow/tpu efficientnet main.py), so ``b5,paper,tpu`` runs the published recipe at 64.
    A rate stated for the recipe's own batch becomes a rate per 256 images: linear for SGD
    (Goyal et al. 2017, "Accurate, Large Minibatch SGD"), square root for Adam and RMSProp
    (Hoffer et al. 2017, "Train longer, generalize better"; Malladi et al. 2022, "On the SDEs
    and Scaling Rules for Adaptive Gradient Algorithms", derive it for both). A recipe without
    a warm-up whose rate the larger batch raises gets ``TPU_WARMUP_EPOCHS``. The thesis recipe:
    Adam 1e-4 at batch 8 becomes 1e-4 * sqrt(64 / 8) = 2.8e-4 at 64, after a 1-epoch ramp.
    """
    batch = TPU_IMAGES_PER_CORE * TPU_CORES
    recipe_batch = config.data.batch_size
    t = config.train
    if t.lr_scaling == "none":
        if t.optimizer in ADAPTIVE_OPTIMIZERS:
            t.learning_rate = t.learning_rate * (256.0 / recipe_batch) ** 0.5
            t.lr_scaling = "sqrt"
        else:
            t.learning_rate = t.learning_rate * 256.0 / recipe_batch
            t.lr_scaling = "linear"
    if batch > recipe_batch and not t.warmup_epochs:
        t.warmup_epochs = TPU_WARMUP_EPOCHS
        if t.schedule in ("step", "exponential"):  # end the ramp before the first decay
            t.warmup_epochs = min(TPU_WARMUP_EPOCHS, t.decay_epochs / 2)
    config.data.batch_size = batch
    config.data.eval_batch_size = batch
    t.mixed_precision = "mixed_bfloat16"  # the TPU's native type (what "auto" picks there)
    return config
