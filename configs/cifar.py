"""CIFAR-10/100 as in the thesis appendix: from scratch or by transfer.

--config=configs/cifar.py:b0              scratch: Adam 1e-3, halve on plateau (patience 2)
--config=configs/cifar.py:b0,transfer     transfer: SGD 1e-3, momentum 0.99, patience 1
"""

from configs import default


def get_config(arg: str | None = None):
    variant, _, mode = (arg or "b0").partition(",")
    config = default.get_config(variant)
    config.data.image_size = 0  # the shards' (build with --image_size to upsample)
    config.data.batch_size = 8 if variant in ("b5", "b6", "b7") else 32  # thesis: 32 (B5: 8)
    config.data.train_crop = "none"
    config.data.eval_crop_fraction = 1.0
    config.model.normalization = "cifar" if mode != "transfer" else "auto"
    config.train.epochs = 40
    config.train.schedule = "plateau"
    config.train.plateau_factor = 0.5
    config.train.best_metric = "accuracy"
    if mode == "transfer":
        config.train.optimizer = "sgd"
        config.train.learning_rate = 1e-3
        config.train.momentum = 0.99
        config.train.plateau_patience = 1
    else:
        config.train.optimizer = "adam"
        config.train.learning_rate = 1e-3
        config.train.plateau_patience = 2
    return config
