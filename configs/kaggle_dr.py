"""Kaggle 2015 EyePACS: the thesis recipe (B5 Noisy-Student fine-tuning), or the paper's.

    --config=configs/kaggle_dr.py:b5          thesis table 4.3: Adam 1e-4, 40 epochs, batch 8,
                                              natural class shares, no RandAugment
    --config=configs/kaggle_dr.py:b5,sampler,randaugment
                                              thesis table 4.4: BalancedSampler + RandAugment
    --config=configs/kaggle_dr.py:b5,paper    the EfficientNet ImageNet recipe, from scratch
    --config=configs/kaggle_dr.py:b5,tpu      the thesis recipe at a batch that fills a TPU VM
                                              (64 images; Adam's rate scaled by the square
                                              root of the batch, 1e-4 -> 2.8e-4, after a
                                              1-epoch warm-up: default.tpu_recipe)
    --config=configs/kaggle_dr.py:b5,paper,tpu
                                              the paper recipe at 64 images, as published:
                                              0.016 per 256 images, linear, 5 warm-up epochs
Pass the pretrained checkpoint with --config.model.weights=PATH (e.g. a timm
tf_efficientnet_b5.ns_jft_in1k file, the thesis's best starting point).
"""

from configs import default

OPTIONS = ("paper", "tpu", "sampler", "randaugment")


def get_config(arg: str | None = None):
    variant, *options = (arg or "b5").split(",")
    unknown = [o for o in options if o not in OPTIONS]
    if unknown:
        raise ValueError(f"configs/kaggle_dr.py: unknown option(s) {unknown}; choose {OPTIONS}")
    config = default.get_config(variant)
    if "paper" in options:
        default.paper_imagenet_recipe(config)
    else:
        default.thesis_dr_finetune_recipe(config)
    # Thesis table 4.3 (its best, 87.08 / 85.81 % with B5-ns) trained with natural class shares
    # and no RandAugment; table 4.4 added both and did worse (82.84 / 81.60 %, thesis table 4.4).
    config.balance.target = "balanced_sampler" if "sampler" in options else "natural"
    if "randaugment" in options:
        config.augment.name = "randaugment"
        config.augment.weights = "thesis"  # thesis: geometric ops favoured over colour
        # The appendix gives no N or M: tensorflow/tpu's defaults (N=2, M=10) stay; search
        # them with experiments.py --search=randaugment.
    else:
        config.augment.name = "none"
    config.train.validation_split = "validation"
    if "tpu" in options:
        default.tpu_recipe(config)
    return config
