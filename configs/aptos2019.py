"""APTOS 2019: fine-tuning with the thesis recipe and the APTOS image statistics.

--config=configs/aptos2019.py:b5 --config.model.weights=PATH
--config=configs/aptos2019.py:b5,randaugment     with RandAugment (N=2, M=10, thesis op weights)
The thesis did not fine-tune on APTOS (table 4.5 scores its Kaggle-trained models there); this
recipe is its DR fine-tuning applied to APTOS.
"""

from configs import default

OPTIONS = ("randaugment",)


def get_config(arg: str | None = None):
    variant, *options = (arg or "b5").split(",")
    unknown = [o for o in options if o not in OPTIONS]
    if unknown:
        raise ValueError(f"configs/aptos2019.py: unknown option(s) {unknown}; choose {OPTIONS}")
    config = default.get_config(variant)
    default.thesis_dr_finetune_recipe(config)
    if "randaugment" in options:
        config.augment.name = "randaugment"
        config.augment.weights = "thesis"  # thesis: geometric ops favoured over colour
    else:
        config.augment.name = "none"  # the thesis's DR fine-tuning (table 4.3) used none
    # Without pretrained weights the model normalises with the APTOS statistics the thesis used;
    # with weights, "auto" keeps what the checkpoint expects.
    config.model.normalization = "auto"
    return config
