"""The tfds ``diabetic_retinopathy_detection/btgraham-300`` preprocessing, written out plainly.

A peer for ``builder_throughput.py`` and the reference that ``tests/test_fundus.py`` checks our
``fundus.btgraham`` against (tensorflow_datasets' ``diabetic_retinopathy_detection``
builder, ``btgraham-300`` config).
"""

import cv2
import numpy as np


def btgraham_reference(image: np.ndarray, radius: int = 300) -> np.ndarray:
    """Radius from the middle row, scale, 4*img - 4*blur + 128, grey outside 0.9 r, crop."""
    x = image[image.shape[0] // 2, :, :].sum(axis=1)
    r = (x > x.mean() / 10).sum() / 2
    s = radius / r
    image = cv2.resize(image, dsize=None, fx=s, fy=s)
    blurred = cv2.GaussianBlur(image, (0, 0), radius / 30)
    image = cv2.addWeighted(image, 4, blurred, -4, 128)
    mask = np.zeros(image.shape)
    centre = (image.shape[1] // 2, image.shape[0] // 2)
    keep = int(radius * 0.9)
    cv2.circle(mask, center=centre, radius=keep, color=(1, 1, 1), thickness=-1)
    image = image * mask + (1 - mask) * 128
    h, w = image.shape[:2]
    image = image[max(h // 2 - keep, 0) : h // 2 + keep, max(w // 2 - keep, 0) : w // 2 + keep]
    return image.astype(np.uint8)


def process_file(path: str, radius: int = 300) -> bytes:
    """Read, decode in full, btgraham, JPEG quality 72: what tfds does per image."""
    with open(path, "rb") as f:
        image = cv2.imdecode(np.frombuffer(f.read(), np.uint8), flags=3)
    image = btgraham_reference(image, radius)
    return cv2.imencode(".jpg", image, [int(cv2.IMWRITE_JPEG_QUALITY), 72])[1].tobytes()
