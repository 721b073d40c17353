"""The quickstart demo: fine-tune EfficientNet-Lite0 (ImageNet weights) on synthetic_dr.

    python demo.py                       (builds the data, converts the weights, then this)
    python train.py --config=configs/demo.py --data_dir=out/demo/tfrecords \\
        --model_dir=out/demo/run --config.model.weights=PATH

Sized for a 2-core CPU: 2000 photographs at 160 px, two epochs (about 4 minutes of training).
"""

from configs import default


def get_config(arg: str | None = None):
    config = default.get_config(arg or "lite0")
    config.data.image_size = 0  # the shards' size (the demo builds them at 160 px)
    config.data.batch_size = 16  # thesis DR fine-tuning used 8 (B5); Lite0 at 160 px fits 16
    config.data.eval_batch_size = 32
    config.data.train_crop = "fundus"
    config.data.eval_crop_fraction = 1.0  # the builder already cropped the disc
    config.augment.num_layers = 2  # thesis DR runs: RandAugment N=2
    config.augment.magnitude = 5.0  # milder than ImageNet's 10: lesions are a few pixels wide
    config.augment.weights = "thesis"
    config.train.epochs = 2  # validation kappa 0.99 after two epochs on this data
    config.train.optimizer = "adam"  # thesis DR fine-tuning: Adam
    config.train.learning_rate = 1e-3  # 10x the thesis's 1e-4: two epochs instead of forty
    config.train.schedule = "step"
    config.train.decay_epochs = 1.0
    config.train.decay_rate = 0.5  # thesis: lr x0.5 every 2 epochs; here every epoch
    config.train.checkpoint_every_steps = 50
    config.train.log_every_steps = 10
    config.train.deterministic = True  # same seed, same model, same report
    return config
