"""Real photographs-of-digits in the CIFAR-10 layout, from data scikit-learn ships.

scikit-learn's ``load_digits`` holds 1,797 real handwritten digits (8 x 8, 17 grey levels, from
the UCI optical-recognition set). Here they become 32 x 32 RGB images, white on black, or each
digit in a random colour on a random background colour (colour then carries no label: harder;
B0 from scratch does not learn it in 12 epochs, keras.applications' B0 neither), with noise,
and are written as ``cifar-10-batches-py/`` pickles (data_batch_1..5, test_batch) that
``tfrecord_builder.py --data=cifar10`` reads like the real download.
"""

from __future__ import annotations

import pathlib
import pickle

import cv2
import numpy as np


def digit_images(seed: int = 0, colour: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(N, 32, 32, 3) uint8 images and (N,) labels 0-9; ``colour=False``: white on black."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    images = []
    for grey in digits.images / 16.0:
        mask = cv2.resize(grey.astype(np.float32), (24, 24), interpolation=cv2.INTER_CUBIC)
        mask = np.clip(np.pad(mask, 4), 0, 1)[..., None]
        ink, paper = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        while np.abs(ink - paper).sum() < 150:  # keep the digit visible
            ink = rng.uniform(0, 255, 3)
        if not colour:
            ink, paper = np.full(3, 255.0), np.zeros(3)
        image = mask * ink + (1 - mask) * paper + rng.normal(0, 8, (32, 32, 3))
        images.append(np.clip(image, 0, 255).astype(np.uint8))
    return np.stack(images), digits.target.astype(np.int64)


def write_cifar10_layout(
    root: pathlib.Path, *, test_fraction: float = 0.2, seed: int = 0, colour: bool = True
):
    """Writes ``root/cifar-10-batches-py/``; returns (train count, test count)."""
    images, labels = digit_images(seed, colour)
    order = np.random.default_rng(seed + 1).permutation(len(labels))
    images, labels = images[order], labels[order]
    n_test = int(round(test_fraction * len(labels)))
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train_images, train_labels = images[n_test:], labels[n_test:]
    batches = np.array_split(np.arange(len(train_labels)), 5)
    parts = [
        (f"data_batch_{i + 1}", train_images[b], train_labels[b]) for i, b in enumerate(batches)
    ]
    parts.append(("test_batch", images[:n_test], labels[:n_test]))
    for name, x, y in parts:
        batch = {
            b"data": x.transpose(0, 3, 1, 2).reshape(len(x), -1),  # CIFAR's channel-planar rows
            b"labels": [int(v) for v in y],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    return len(train_labels), n_test
