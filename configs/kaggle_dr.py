"""Kaggle 2015 EyePACS: the thesis recipe (B5 Noisy-Student fine-tuning), or the paper's.

    --config=configs/kaggle_dr.py:b5          thesis fine-tuning (Adam 1e-4, 40 epochs, batch 8)
    --config=configs/kaggle_dr.py:b5,paper    the EfficientNet ImageNet recipe, from scratch
Pass the pretrained checkpoint with --config.model.weights=PATH (e.g. a timm
tf_efficientnet_b5.ns_jft_in1k file, the thesis's best starting point).
"""

from configs import default


def get_config(arg: str | None = None):
    variant, _, recipe = (arg or "b5").partition(",")
    config = default.get_config(variant)
    if recipe == "paper":
        default.paper_imagenet_recipe(config)
    else:
        default.thesis_dr_finetune_recipe(config)
    # The thesis trained with natural class shares; its BalancedSampler + RandAugment run did
    # worse (82.84 / 81.60 % against 87.08 / 85.81 %, ANCHORS.md).
    config.balance.target = "natural"
    config.augment.name = "randaugment"
    config.augment.weights = "thesis"
    config.augment.magnitude = 9.0
    config.train.validation_split = "validation"
    return config
