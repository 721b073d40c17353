"""EfficientNet models and their pretrained weights.

from effdr_tf import models
model = models.efficientnet("b5", num_classes=5, weights="tf_efficientnet_b5_ns.pth")
models.convert("tf_efficientnet_b5_ns.pth", "b5_ns.weights.h5", variant="b5")
"""

from effdr_tf.models.factory import convert, efficientnet, float32_copy
from effdr_tf.models.network import (
    VARIANTS,
    architecture,
    build_efficientnet,
    canonical_variant,
    variant_names,
)
from effdr_tf.models.weights import Checkpoint, read_checkpoint

__all__ = [
    "VARIANTS",
    "Checkpoint",
    "architecture",
    "build_efficientnet",
    "canonical_variant",
    "convert",
    "efficientnet",
    "float32_copy",
    "read_checkpoint",
    "variant_names",
]
