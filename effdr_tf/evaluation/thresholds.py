"""Grades from a continuous score by cut points fitted to maximise quadratic weighted kappa.

Many entries to competitions scored by kappa (Kaggle 2015 diabetic retinopathy, APTOS 2019)
read a grade off a continuous output (a regression, or an expected grade) with thresholds tuned
on held-out data, rather than by argmax: kappa rewards getting the order right, and a
model's expected grade is pulled towards the mean grade, so the natural cut points 0.5, 1.5, ...
are not the best ones.

``fit`` searches one cut point at a time over the midpoints between neighbouring scores
(coordinate ascent, like the "optimised rounder" of public Kaggle notebooks, but exhaustive per
coordinate instead of Nelder-Mead), keeping the cut points in order, until no single move raises
kappa.
"""

from __future__ import annotations

import numpy as np

from effdr_tf.evaluation import metrics


def expected_grade(probabilities) -> np.ndarray:
    """sum_k k p_k for each row of class probabilities."""
    p = np.asarray(probabilities, np.float64)
    return p @ np.arange(p.shape[1])


def natural(num_classes: int) -> np.ndarray:
    """The cut points halfway between grades: 0.5, 1.5, ..., K - 1.5."""
    return np.arange(num_classes - 1) + 0.5


def apply(scores, thresholds) -> np.ndarray:
    """Grade k for a score in [t_{k-1}, t_k): the number of cut points at or below it."""
    return np.searchsorted(np.asarray(thresholds), np.asarray(scores), side="right")


def kappa(scores, labels, thresholds, num_classes: int) -> float:
    grades = apply(scores, thresholds)
    return metrics.quadratic_weighted_kappa(metrics.confusion_matrix(labels, grades, num_classes))


def fit(scores, labels, num_classes: int, *, max_rounds: int = 50) -> tuple[np.ndarray, float]:
    """Cut points on ``scores`` that maximise QWK against ``labels``.

    Starts from the natural cut points; each round moves each cut point in turn to the best
    place between its neighbours, trying every gap between neighbouring distinct scores; stops
    when a round changes nothing. Only samples between the neighbours change grade, and they
    fill exactly the two grades on either side of the cut point, so every placement's
    confusion matrix comes from cumulative label counts: O(N K^2) per cut point.

    Returns:
        The thresholds (increasing, K - 1 of them) and the kappa they reach on these data.
    """
    k = num_classes
    scores = np.asarray(scores, np.float64)
    order = np.argsort(scores, kind="stable")
    s, y = scores[order], np.asarray(labels, np.int64)[order]
    n = s.size
    counts = np.zeros((n + 1, k))
    counts[1:] = np.cumsum(np.eye(k)[y], axis=0)  # counts[j]: labels among the j lowest
    grid = np.arange(k)
    weights = (grid[:, None] - grid[None, :]) ** 2 / (k - 1) ** 2
    truth = counts[n]  # label counts: the confusion matrix's row sums, fixed

    def qwk(confusions):  # [J, K, K] -> [J]
        observed = (weights * confusions).sum(axis=(1, 2))
        expected = truth[None, :, None] * confusions.sum(axis=1)[:, None, :] / max(n, 1)
        denominator = (weights * expected).sum(axis=(1, 2))
        safe = np.where(denominator > 0, denominator, 1.0)
        return np.where(denominator > 0, 1.0 - observed / safe, 0.0)

    thresholds = natural(k)
    best = float(qwk(metrics.confusion_matrix(y, apply(s, thresholds), k)[None].astype(float))[0])
    for _ in range(max_rounds):
        moved = False
        for i in range(k - 1):
            low = thresholds[i - 1] if i > 0 else -np.inf
            high = thresholds[i + 1] if i < k - 2 else np.inf
            a = int(np.searchsorted(s, low, side="left"))
            b = int(np.searchsorted(s, high, side="left"))
            if a == b:
                continue
            # Split j: the scores a..j-1 take grade i, j..b-1 grade i + 1.
            splits, values = [], []
            if not np.isfinite(low) or s[a] > low:
                splits.append(a)
                values.append((low + s[a]) / 2 if np.isfinite(low) else s[a] - 1.0)
            inner = np.arange(a + 1, b)
            inner = inner[s[inner - 1] < s[inner]]
            splits += inner.tolist()
            values += ((s[inner - 1] + s[inner]) / 2).tolist()
            splits.append(b)
            values.append((s[b - 1] + high) / 2 if np.isfinite(high) else s[b - 1] + 1.0)
            splits = np.asarray(splits)
            base = metrics.confusion_matrix(y, apply(s, thresholds), k).astype(np.float64)
            base[:, i] = 0.0  # exactly the samples a..b-1 fill these two columns
            base[:, i + 1] = 0.0
            confusions = np.repeat(base[None], splits.size, axis=0)
            confusions[:, :, i] = counts[splits] - counts[a]
            confusions[:, :, i + 1] = counts[b] - counts[splits]
            scored = qwk(confusions)
            j = int(np.argmax(scored))
            if scored[j] > best + 1e-12:
                best, thresholds[i], moved = float(scored[j]), values[j], True
        if not moved:
            break
    return thresholds, best
