"""What a DR paper reports from (labels, probabilities): per-grade statistics, curves' areas,
referable-DR operating points, calibration, bootstrap intervals and patient-level results.

Everything here is NumPy and scikit-learn on arrays; nothing reads models or files. Referable
DR is grade >= 2 (ICDR moderate or worse); its score is the summed probability of grades 2-4.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

from effdr_tf import constants
from effdr_tf.evaluation import metrics

REFERABLE_GRADE = constants.REFERABLE_GRADE
# Gulshan et al. 2016 (JAMA), EyePACS-1: the high-sensitivity operating point reached 97.5 %
# sensitivity and the high-specificity one 98.1 % specificity (ANCHORS.md).
HIGH_SENSITIVITY_TARGET = 0.975
HIGH_SPECIFICITY_TARGET = 0.981


def referable_score(probabilities: np.ndarray) -> np.ndarray:
    return np.asarray(probabilities)[:, REFERABLE_GRADE:].sum(1)


def per_class(confusion) -> dict:
    """Precision, sensitivity (recall), specificity and F1 per grade, one-vs-rest."""
    c = np.asarray(confusion, np.float64)
    tp = np.diag(c)
    fp = c.sum(0) - tp
    fn = c.sum(1) - tp
    tn = c.sum() - tp - fp - fn
    precision = tp / np.maximum(tp + fp, 1)
    sensitivity = tp / np.maximum(tp + fn, 1)
    specificity = tn / np.maximum(tn + fp, 1)
    f1 = 2 * precision * sensitivity / np.maximum(precision + sensitivity, 1e-12)
    return {
        "precision": precision.tolist(),
        "sensitivity": sensitivity.tolist(),
        "specificity": specificity.tolist(),
        "f1": f1.tolist(),
        "support": c.sum(1).astype(int).tolist(),
    }


def _auc(binary_labels, scores) -> float | None:
    """ROC AUC, or None when only one class is present (undefined)."""
    if len(np.unique(binary_labels)) < 2:
        return None
    return float(skm.roc_auc_score(binary_labels, scores))


def _ap(binary_labels, scores) -> float | None:
    if not np.any(binary_labels):
        return None
    return float(skm.average_precision_score(binary_labels, scores))


def expected_calibration_error(labels, probabilities, bins: int = 15) -> dict:
    """ECE of the top-class confidence over equal-width bins, and the bins for a diagram."""
    probabilities = np.asarray(probabilities)
    confidence = probabilities.max(1)
    correct = probabilities.argmax(1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    ece, rows = 0.0, []
    for b in range(bins):
        inside = index == b
        n = int(inside.sum())
        if n:
            acc, conf = float(correct[inside].mean()), float(confidence[inside].mean())
            ece += n / len(confidence) * abs(acc - conf)
        else:
            acc = conf = None
        rows.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": n,
                     "accuracy": acc, "confidence": conf})  # fmt: skip
    return {"ece": float(ece), "bins": rows}


def operating_points(labels, probabilities) -> dict:
    """Thresholds on the referable score for the two operating points, fitted on these data
    (validation): the highest threshold whose sensitivity reaches HIGH_SENSITIVITY_TARGET, and
    the lowest whose specificity reaches HIGH_SPECIFICITY_TARGET."""
    referable = np.asarray(labels) >= REFERABLE_GRADE
    score = referable_score(probabilities)
    if referable.all() or not referable.any():
        raise ValueError("operating points need both referable and non-referable examples")
    fpr, tpr, thresholds = skm.roc_curve(referable, score)
    thresholds = np.minimum(thresholds, 1.0)  # sklearn's first threshold is inf
    high_sens = thresholds[np.argmax(tpr >= HIGH_SENSITIVITY_TARGET)]
    meets_spec = (1 - fpr) >= HIGH_SPECIFICITY_TARGET
    high_spec = thresholds[np.nonzero(meets_spec)[0][-1]] if meets_spec.any() else 1.0
    return {"high_sensitivity": float(high_sens), "high_specificity": float(high_spec)}


def at_threshold(labels, probabilities, threshold: float) -> dict:
    referable = np.asarray(labels) >= REFERABLE_GRADE
    flagged = referable_score(probabilities) >= threshold
    tp = int((flagged & referable).sum())
    tn = int((~flagged & ~referable).sum())
    return {
        "threshold": float(threshold),
        "sensitivity": tp / max(1, int(referable.sum())),
        "specificity": tn / max(1, int((~referable).sum())),
    }


def bootstrap(labels, probabilities, *, rounds: int = 1000, seed: int = 0, level=0.95) -> dict:
    """Percentile bootstrap intervals (resampling examples) for kappa and referable AUC."""
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities)
    k = probabilities.shape[1]
    rng = np.random.default_rng(seed)
    predicted = probabilities.argmax(1)
    score = referable_score(probabilities)
    referable = labels >= REFERABLE_GRADE
    kappas, aucs = [], []
    for _ in range(rounds):
        i = rng.integers(0, len(labels), len(labels))
        kappas.append(
            metrics.quadratic_weighted_kappa(metrics.confusion_matrix(labels[i], predicted[i], k))
        )
        auc = _auc(referable[i], score[i])
        if auc is not None:
            aucs.append(auc)
    tail = (1 - level) / 2 * 100
    out = {"rounds": rounds, "level": level}
    out["kappa"] = [float(np.percentile(kappas, tail)), float(np.percentile(kappas, 100 - tail))]
    out["referable_auc"] = (
        [float(np.percentile(aucs, tail)), float(np.percentile(aucs, 100 - tail))] if aucs else None
    )
    return out


def by_patient(labels, probabilities, patient_ids) -> tuple[np.ndarray, np.ndarray]:
    """One row per patient: the worse eye's grade, and per-grade probabilities of the eye with
    the higher expected grade (the usual screening rule: a patient is as ill as the worse eye).
    """
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities)
    patients = np.asarray(patient_ids).astype(str)
    expected = probabilities @ np.arange(probabilities.shape[1])
    order = np.lexsort((-expected, patients))  # per patient, the worse-looking eye first
    _, first = np.unique(patients[order], return_index=True)
    rows = order[first]
    worst_label = np.array([labels[patients == p].max() for p in patients[rows]])
    return worst_label, probabilities[rows]


def summarize(labels, probabilities, thresholds: dict | None = None, *, bootstrap_rounds=1000):
    """Every number for one set of predictions. ``thresholds``: operating points from
    validation (applied unchanged); None fits them here (only for the validation split)."""
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities)
    k = probabilities.shape[1]
    predicted = probabilities.argmax(1)
    confusion = metrics.confusion_matrix(labels, predicted, k)
    rows = confusion.sum(1, keepdims=True)
    out = {
        "count": int(len(labels)),
        "accuracy": metrics.accuracy(confusion),
        "kappa": metrics.quadratic_weighted_kappa(confusion),
        "confusion": confusion.tolist(),
        "confusion_normalized": (confusion / np.maximum(rows, 1)).tolist(),
        "per_class": per_class(confusion),
        "roc_auc": [_auc(labels == c, probabilities[:, c]) for c in range(k)],
        "average_precision": [_ap(labels == c, probabilities[:, c]) for c in range(k)],
        "calibration": expected_calibration_error(labels, probabilities),
    }
    if k > REFERABLE_GRADE:
        referable = labels >= REFERABLE_GRADE
        score = referable_score(probabilities)
        out["referable"] = {
            "prevalence": float(referable.mean()) if len(labels) else 0.0,
            "auc": _auc(referable, score),
            "average_precision": _ap(referable, score),
        }
        if thresholds is None and 0 < referable.sum() < len(labels):
            thresholds = operating_points(labels, probabilities)
        if thresholds:
            out["referable"]["operating_points"] = {
                name: at_threshold(labels, probabilities, t) for name, t in thresholds.items()
            }
    if bootstrap_rounds and len(labels):
        out["bootstrap_95"] = bootstrap(labels, probabilities, rounds=bootstrap_rounds)
    return out
