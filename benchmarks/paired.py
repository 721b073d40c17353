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

    The patient resampler of eval.py's intervals (``clinical.ClusterBootstrap``), with both
    models read on the same resamples.

    Args:
        labels: [N] test grades.
        patients: [N] patient ids; a patient's photographs are drawn together ("" for none:
            the photograph is its own cluster).
        base, other: (grades [N], probabilities [N, K]) of the two models on the same photographs.
        rounds: bootstrap resamples.
    """
    from effdr_tf.evaluation import clinical

    labels = np.asarray(labels)
    base_grades, base_probs = base
    grades, probs = other
    k = int(max(np.asarray(probs).shape[1], labels.max(initial=0) + 1))
    boot = clinical.ClusterBootstrap(patients, len(labels), rounds=rounds, seed=seed)
    dk = boot.kappa(labels, grades, k) - boot.kappa(labels, base_grades, k)
    referable = labels >= clinical.REFERABLE_GRADE
    da = boot.auc(referable, clinical.referable_score(probs)) - boot.auc(
        referable, clinical.referable_score(base_probs)
    )
    return {"kappa": boot.interval(dk), "auc": boot.interval(da)}
