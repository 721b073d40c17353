"""Test-set figures for side-by-side benchmarks, and the paired bootstrap of their differences.

Patients are resampled (both eyes together), so the interval of a difference between two
models scored on the same photographs reflects the test sample, not the models' training seeds.
"""

from __future__ import annotations

import numpy as np


def kappa(labels, grades, num_classes: int = 5) -> float:
    """Quadratic weighted kappa of ``grades`` against ``labels``."""
    from effdr_tf.evaluation import metrics

    return metrics.quadratic_weighted_kappa(metrics.confusion_matrix(labels, grades, num_classes))


def referable_auc(labels, probabilities) -> float:
    """ROC AUC of P(grade >= 2) for referable DR (moderate or worse)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels >= 2, probabilities[:, 2:].sum(1)))


def interval(labels, patients, base, other, rounds: int, seed: int = 0) -> dict:
    """95 % percentile intervals of (other - base) for kappa and referable AUC.

    Args:
        labels: [N] test grades.
        patients: [N] patient ids; a patient's photographs are drawn together.
        base, other: (grades [N], probabilities [N, K]) of the two models on the same photographs.
        rounds: bootstrap resamples.
    """
    base_grades, base_probs = base
    grades, probs = other
    unique, index = np.unique(patients, return_inverse=True)
    members = [np.nonzero(index == i)[0] for i in range(len(unique))]
    rng = np.random.default_rng(seed)
    dk, da = [], []
    for _ in range(rounds):
        rows = np.concatenate([members[i] for i in rng.integers(0, len(unique), len(unique))])
        y = labels[rows]
        dk.append(kappa(y, grades[rows]) - kappa(y, base_grades[rows]))
        if 0 < (y >= 2).sum() < len(y):
            da.append(referable_auc(y, probs[rows]) - referable_auc(y, base_probs[rows]))
    return {
        "kappa": [float(np.percentile(dk, 2.5)), float(np.percentile(dk, 97.5))],
        "auc": [float(np.percentile(da, 2.5)), float(np.percentile(da, 97.5))],
    }
