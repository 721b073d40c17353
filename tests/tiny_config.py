"""A config small enough to train in seconds on CPU: the tiny variant on 32-px images."""

from configs import default


def get_config(arg=None):
    config = default.get_config(arg or "tiny")
    config.data.batch_size = 8
    config.data.eval_batch_size = 16
    config.data.train_crop = "none"
    config.data.eval_crop_fraction = 1.0
    config.data.shuffle_buffer = 64
    config.augment.name = "none"
    config.train.epochs = 2
    config.train.steps_per_epoch = 4
    config.train.learning_rate = 1e-3
    config.train.ema_decay = 0.99
    config.train.checkpoint_every_steps = 2
    config.train.log_every_steps = 1
    config.train.export = False
    return config


def train_exported(data_dir, run_dir, **model):
    """Trains this config for one epoch on ``data_dir`` into ``run_dir`` and exports it;
    ``model`` overrides ``config.model`` keys. Returns the config."""
    from effdr_tf.training import loop

    config = get_config()
    config.data.data_dir = str(data_dir)
    config.train.epochs = 1
    config.train.export = True
    for key, value in model.items():
        config.model[key] = value
    loop.train(config, str(run_dir), progress=False)
    return config
