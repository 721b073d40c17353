"""Kaggle 2015 EyePACS: the thesis recipe (B5 Noisy-Student fine-tuning), or the paper's.

    --config=configs/kaggle_dr.py:b5          thesis fine-tuning (Adam 1e-4, 40 epochs, batch 8)
    --config=configs/kaggle_dr.py:b5,paper    the EfficientNet ImageNet recipe, from scratch
    --config=configs/kaggle_dr.py:b5,tpu      the thesis recipe at a batch that fills a TPU VM
                                              (64 images, learning rate scaled linearly)
Pass the pretrained checkpoint with --config.model.weights=PATH (e.g. a timm
tf_efficientnet_b5.ns_jft_in1k file, the thesis's best starting point).
"""

from configs import default


def get_config(arg: str | None = None):
    variant, *options = (arg or "b5").split(",")
    config = default.get_config(variant)
    if "paper" in options:
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
    if "tpu" in options:
        default.tpu_recipe(config)
    return config
