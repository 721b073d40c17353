"""The quickstart demo: fine-tune EfficientNet-Lite0 (real ImageNet weights) on synthetic_dr.

python train.py --config=configs/demo.py --data_dir=out/demo/tfrecords --model_dir=out/demo/run
"""

import default


def get_config(arg: str | None = None):
    config = default.get_config(arg or "lite0")
    config.data.image_size = 0  # the shards' size
    config.data.batch_size = 16
    config.data.eval_batch_size = 32
    config.data.train_crop = "fundus"
    config.data.eval_crop_fraction = 1.0  # the builder already cropped the disc
    config.augment.num_layers = 2
    config.augment.magnitude = 5.0
    config.augment.weights = "thesis"
    config.train.epochs = 6
    config.train.optimizer = "adam"  # thesis DR fine-tuning: Adam
    config.train.learning_rate = 1e-3
    config.train.schedule = "step"
    config.train.decay_epochs = 2.0
    config.train.decay_rate = 0.5  # thesis: lr x0.5 every 2 epochs
    config.train.checkpoint_every_steps = 100
    config.train.log_every_steps = 10
    return config
