"""Constants shared by the builder, the input pipeline, the models and evaluation.

Normalisation presets are (mean, std) per RGB channel on pixels scaled to [0, 1]; a model or
pipeline applies ``(pixel / 255 - mean) / std``.
"""

# ICDR grades used by every DR dataset this project reads.
DR_GRADES = ("No DR", "Mild", "Moderate", "Severe", "Proliferative")
# Referable DR is grade >= 2 (Gulshan et al. 2016).
REFERABLE_GRADE = 2

NORMALIZATION_PRESETS = {
    # ImageNet statistics: Keras applications, timm standard / Noisy-Student, efficientnet_pytorch.
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # [-1, 1]: AdvProp checkpoints and the PyTorch ports of EfficientNet-Lite.
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    # [0, 1]: what keras.applications EfficientNets built with weights=None compute.
    "unit": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    # APTOS 2019 statistics used by the thesis and public APTOS notebooks.
    "dr_aptos": ((0.42, 0.22, 0.075), (0.27, 0.15, 0.081)),
    # CIFAR-10 training-set statistics.
    "cifar": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    # CIFAR-100 training-set statistics (thesis appendix 5.1).
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}
# "none": the input is already normalised; no normalisation is applied.
NO_NORMALIZATION = "none"

# TFRecord example keys: the shard format of docs/datasets.md.
FEATURE_IMAGE = "image/encoded"
FEATURE_FORMAT = "image/format"
FEATURE_HEIGHT = "image/height"
FEATURE_WIDTH = "image/width"
FEATURE_LABEL = "image/class/label"
FEATURE_ID = "image/id"
FEATURE_PATIENT_ID = "image/patient_id"
FEATURE_EYE = "image/eye"
FEATURE_SOURCE = "image/source"
# Pseudo-labelled records only: the teacher's class probabilities (the soft label).
FEATURE_SOFT_LABEL = "image/class/probabilities"
