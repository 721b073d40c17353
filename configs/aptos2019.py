"""APTOS 2019: fine-tuning with the thesis recipe and the APTOS image statistics.

--config=configs/aptos2019.py:b5 --config.model.weights=PATH
"""

from configs import default


def get_config(arg: str | None = None):
    config = default.get_config(arg or "b5")
    default.thesis_dr_finetune_recipe(config)
    config.augment.weights = "thesis"
    config.augment.magnitude = 9.0
    # Without pretrained weights the model normalises with the APTOS statistics the thesis used;
    # with weights, "auto" keeps what the checkpoint expects.
    config.model.normalization = "auto"
    return config
