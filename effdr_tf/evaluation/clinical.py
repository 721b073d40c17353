"""What a DR paper reports from (labels, probabilities): per-grade statistics, curves' areas,
referable-DR operating points, calibration, bootstrap intervals and patient-level results.

Everything here is NumPy and scikit-learn on arrays; nothing reads models or files. Referable
DR is grade >= 2 (ICDR moderate or worse); its score is the summed probability of grades 2-4.

Intervals are percentile intervals of a cluster bootstrap over patients: both eyes of a patient
share the patient's disease and the model's errors on that patient, so resampling photographs
independently treats correlated photographs as independent evidence and gives intervals that are
too narrow (Efron & Tibshirani 1993, "An Introduction to the Bootstrap", ch. 8, for resampling
the independent units; Field & Welsh 2007, "Bootstrapping clustered data", JRSS B 69(3)). A
photograph without a patient id is its own cluster. One set of resampled patients is drawn per
split (fixed seed) and every interval of that split is read off the same resamples.

Nothing is fitted on the predictions it is reported on: ``summarize`` applies operating points
given to it, and the validation split's own figures at its fitted points come from patient folds
(``out_of_fold_thresholds``, ``out_of_fold_grades``), each fold scored by points fitted on the
others.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

from effdr_tf import constants
from effdr_tf.evaluation import metrics
from effdr_tf.evaluation import thresholds as grade_thresholds

REFERABLE_GRADE = constants.REFERABLE_GRADE
# Gulshan et al. 2016, "Development and validation of a deep learning algorithm for detection of
# diabetic retinopathy in retinal fundus photographs", JAMA 316(22):2402-2410, EyePACS-1: the
# high-sensitivity operating point reached 97.5 % sensitivity and the high-specificity one
# 98.1 % specificity.
HIGH_SENSITIVITY_TARGET = 0.975
HIGH_SPECIFICITY_TARGET = 0.981
# Below this many referable or non-referable rows (images, or patients at patient level) a
# split's intervals are withheld and a warning given instead: a percentile bootstrap of a
# proportion needs a few tens of events per group before its interval means anything, and a
# 97.5 % sensitivity target cannot even be told from 100 % on fewer than 40 referable cases.
MIN_PER_GROUP = 30
# Cut points or operating points fitted on fewer validation rows than this get a warning.
MIN_FIT_ROWS = 100
FOLDS = 5
LEVEL = 0.95


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


def _calibration_bins(probabilities, labels, bins: int):
    confidence = probabilities.max(1)
    correct = probabilities.argmax(1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    return confidence, correct, edges, index


def expected_calibration_error(labels, probabilities, bins: int = 15) -> dict:
    """ECE of the top-class confidence over equal-width bins, and the bins for a diagram."""
    probabilities = np.asarray(probabilities)
    confidence, correct, edges, index = _calibration_bins(probabilities, labels, bins)
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


def clusters(patient_ids, n: int) -> np.ndarray:
    """Cluster index 0..C-1 of each of ``n`` rows: one per patient id, and one of its own for
    each row without one (None: every row its own)."""
    if patient_ids is None:
        return np.arange(n)
    ids = np.asarray(patient_ids).astype(str)
    _, index = np.unique(ids, return_inverse=True)
    blank = ids == ""
    index = index.astype(np.int64)
    index[blank] = index.max(initial=0) + 1 + np.arange(int(blank.sum()))
    return np.unique(index, return_inverse=True)[1].reshape(-1)


def _kappa_batch(confusions: np.ndarray) -> np.ndarray:
    """``metrics.quadratic_weighted_kappa`` of each [K, K] matrix of a [R, K, K] stack."""
    c = np.asarray(confusions, np.float64)
    k = c.shape[-1]
    i, j = np.indices((k, k))
    weights = (i - j) ** 2 / max(1, (k - 1) ** 2)
    total = c.sum((1, 2))
    expected = c.sum(2)[:, :, None] * c.sum(1)[:, None, :] / np.maximum(total, 1e-12)[:, None, None]
    observed = (weights * c).sum((1, 2))
    denominator = (weights * expected).sum((1, 2))
    safe = np.where(denominator > 0, denominator, 1.0)
    kappa = np.where(denominator > 0, 1.0 - observed / safe, np.where(observed == 0, 1.0, 0.0))
    return np.where(total > 0, kappa, 0.0)


class ClusterBootstrap:
    """Resamples of the clusters (patients) of one set of rows, shared by every statistic.

    Each round draws as many clusters as there are, with replacement; a statistic is computed
    with each row weighted by how often its cluster was drawn. Statistics that are sums over
    rows (confusion matrices, sensitivities, calibration bins) are summed per cluster once, so
    a round costs one product of the [rounds, clusters] draw counts with those sums.

    Args:
        patient_ids: [N] patient ids ("" for none), or None (every row its own cluster).
        n: rows.
        rounds: resamples.
        seed: the draws' seed.
        level: the intervals' coverage.
    """

    def __init__(self, patient_ids, n: int, *, rounds: int = 1000, seed: int = 0, level=LEVEL):
        self.cluster = clusters(patient_ids, n)
        self.n = n
        self.num_clusters = int(self.cluster.max()) + 1 if n else 0
        self.rounds = rounds
        self.level = level
        c = self.num_clusters
        draws = np.random.default_rng(seed).integers(0, max(c, 1), (rounds, c))
        offsets = (np.arange(rounds) * c)[:, None]
        self.counts = (
            np.bincount((draws + offsets).ravel(), minlength=rounds * c)
            .reshape(rounds, c)
            .astype(np.float64)
        )

    def sums(self, values) -> np.ndarray:
        """[R, F] resampled sums of per-row ``values`` [N, F] (or [N])."""
        values = np.asarray(values, np.float64)
        flat = values.reshape(self.n, -1)
        per_cluster = np.zeros((self.num_clusters, flat.shape[1]))
        np.add.at(per_cluster, self.cluster, flat)
        return self.counts @ per_cluster

    def interval(self, values) -> list | None:
        """The percentile interval of per-round ``values``; rounds where the statistic is
        undefined (NaN) are left out; None when none is defined."""
        values = np.asarray(values, np.float64)
        values = values[np.isfinite(values)]
        if not values.size:
            return None
        tail = (1 - self.level) / 2 * 100
        return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]

    def confusions(self, labels, predicted, k: int) -> np.ndarray:
        labels = np.asarray(labels, np.int64)
        codes = np.eye(k * k)[labels * k + np.asarray(predicted, np.int64)]
        return self.sums(codes).reshape(self.rounds, k, k)

    def kappa(self, labels, predicted, k: int) -> np.ndarray:
        return _kappa_batch(self.confusions(labels, predicted, k))

    def accuracy(self, labels, predicted) -> np.ndarray:
        hits = self.sums(np.stack([np.asarray(labels) == np.asarray(predicted),
                                   np.ones(self.n)], 1))  # fmt: skip
        return hits[:, 0] / np.where(hits[:, 1] > 0, hits[:, 1], np.nan)

    def rates(self, positive, flagged) -> tuple[np.ndarray, np.ndarray]:
        """Per-round sensitivity and specificity of ``flagged`` against ``positive``."""
        positive, flagged = np.asarray(positive, bool), np.asarray(flagged, bool)
        s = self.sums(np.stack([positive & flagged, positive, ~positive & ~flagged, ~positive], 1))
        with np.errstate(invalid="ignore", divide="ignore"):
            return s[:, 0] / s[:, 1], s[:, 2] / s[:, 3]

    def auc(self, positive, score, *, chunk: int = 100) -> np.ndarray:
        """Per-round ROC AUC (ties count half), the Mann-Whitney statistic with the rows
        weighted by their draw counts; NaN where a round lacks one class."""
        positive = np.asarray(positive, bool)
        order = np.argsort(np.asarray(score, np.float64), kind="stable")
        s = np.asarray(score, np.float64)[order]
        starts = np.concatenate([[0], np.nonzero(np.diff(s))[0] + 1]) if s.size else np.array([0])
        pos = positive[order].astype(np.float64)
        cluster = self.cluster[order]
        out = np.empty(self.rounds)
        for r in range(0, self.rounds, chunk):
            w = self.counts[r : r + chunk][:, cluster]
            p = np.add.reduceat(w * pos, starts, axis=1)
            q = np.add.reduceat(w * (1 - pos), starts, axis=1)
            below = np.cumsum(q, axis=1) - q
            with np.errstate(invalid="ignore", divide="ignore"):
                out[r : r + chunk] = (p * (below + 0.5 * q)).sum(1) / (p.sum(1) * q.sum(1))
        return out

    def ece(self, labels, probabilities, bins: int = 15) -> np.ndarray:
        probabilities = np.asarray(probabilities, np.float64)
        confidence, correct, _, index = _calibration_bins(probabilities, labels, bins)
        one_hot = np.eye(bins)[index]
        s = self.sums(np.concatenate([one_hot * correct[:, None],
                                      one_hot * confidence[:, None]], 1))  # fmt: skip
        total = np.maximum(self.counts @ np.bincount(self.cluster, minlength=self.num_clusters), 1)
        return np.abs(s[:, :bins] - s[:, bins:]).sum(1) / total


def _intervals(boot: ClusterBootstrap, labels, probabilities) -> dict:
    k = probabilities.shape[1]
    predicted = probabilities.argmax(1)
    out = {
        "rounds": boot.rounds,
        "level": boot.level,
        "resampled": f"{boot.num_clusters} clusters (patients; an image without a patient id "
        "is its own)",
        "kappa": boot.interval(boot.kappa(labels, predicted, k)),
        "accuracy": boot.interval(boot.accuracy(labels, predicted)),
        "ece": boot.interval(boot.ece(labels, probabilities)),
        "referable_auc": None,
    }
    if k > REFERABLE_GRADE:
        out["referable_auc"] = boot.interval(
            boot.auc(labels >= REFERABLE_GRADE, referable_score(probabilities))
        )
    return out


def operating_points(labels, probabilities) -> dict:
    """Thresholds on the referable score for the two operating points, fitted on these data
    (validation): the highest threshold whose sensitivity reaches HIGH_SENSITIVITY_TARGET, and
    the lowest whose specificity reaches HIGH_SPECIFICITY_TARGET. Exact: every distinct score
    is a candidate (a ROC curve with its collinear points dropped would skip some)."""
    referable = np.asarray(labels) >= REFERABLE_GRADE
    score = referable_score(probabilities)
    if referable.all() or not referable.any():
        raise ValueError("operating points need both referable and non-referable examples")
    candidates = np.unique(score)  # ascending; a case is flagged when score >= threshold
    sensitivity = (
        referable.sum() - np.searchsorted(np.sort(score[referable]), candidates, side="left")
    ) / referable.sum()
    specificity = (
        np.searchsorted(np.sort(score[~referable]), candidates, side="left") / (~referable).sum()
    )
    high_sens = candidates[np.nonzero(sensitivity >= HIGH_SENSITIVITY_TARGET)[0][-1]]
    meets = np.nonzero(specificity >= HIGH_SPECIFICITY_TARGET)[0]
    # None of the scores reaches the specificity: flag nothing (just above the top score).
    high_spec = candidates[meets[0]] if meets.size else np.nextafter(score.max(), np.inf)
    return {"high_sensitivity": float(high_sens), "high_specificity": float(high_spec)}


def can_fit_operating_points(labels) -> str | None:
    """None, or why these labels cannot give operating points."""
    referable = np.asarray(labels) >= REFERABLE_GRADE
    if not len(referable):
        return "no images"
    if referable.all():
        return "only referable images (grade >= 2)"
    if not referable.any():
        return "no referable images (grade >= 2)"
    return None


def at_threshold(labels, probabilities, threshold) -> dict:
    """Sensitivity and specificity of flagging referable score >= ``threshold`` (a number, or
    one per row for out-of-fold figures)."""
    referable = np.asarray(labels) >= REFERABLE_GRADE
    flagged = referable_score(probabilities) >= np.asarray(threshold)
    tp = int((flagged & referable).sum())
    tn = int((~flagged & ~referable).sum())
    return {
        "sensitivity": tp / max(1, int(referable.sum())),
        "specificity": tn / max(1, int((~referable).sum())),
    }


def folds(patient_ids, n: int, *, count: int = FOLDS, seed: int = 0) -> np.ndarray:
    """Fold 0..count-1 of each row, by cluster (a patient's photographs share a fold)."""
    cluster = clusters(patient_ids, n)
    num = int(cluster.max()) + 1 if n else 0
    order = np.random.default_rng([seed, 17]).permutation(num)
    fold_of = np.empty(num, np.int64)
    fold_of[order] = np.arange(num) % count
    return fold_of[cluster]


def out_of_fold_thresholds(labels, probabilities, fold) -> dict | None:
    """Per-row operating-point thresholds, each row's fitted on the other folds; None when a
    fold's complement cannot give them."""
    labels = np.asarray(labels)
    out = {name: np.full(len(labels), np.nan) for name in ("high_sensitivity", "high_specificity")}
    for f in np.unique(fold):
        held = fold == f
        if can_fit_operating_points(labels[~held]):
            return None
        for name, t in operating_points(labels[~held], probabilities[~held]).items():
            out[name][held] = t
    return out


def out_of_fold_grades(scores, labels, fold, num_classes: int) -> np.ndarray | None:
    """Grades at cut points on ``scores`` fitted for kappa on the other folds; None when a
    fold's complement has fewer than two grades."""
    labels = np.asarray(labels)
    scores = np.asarray(scores, np.float64)
    grades = np.zeros(len(labels), np.int64)
    for f in np.unique(fold):
        held = fold == f
        if len(np.unique(labels[~held])) < 2:
            return None
        cuts, _ = grade_thresholds.fit(scores[~held], labels[~held], num_classes)
        grades[held] = grade_thresholds.apply(scores[held], cuts)
    return grades


def by_patient(labels, probabilities, patient_ids, *, by: str = "expected_grade"):
    """One row per patient: the worse eye's grade, and the probabilities of the eye that looks
    worse by ``by`` (the usual screening rule: a patient is as ill as the worse eye).

    Args:
        by: ``expected_grade`` (for grades and kappa) or ``referable`` (for the referable score
            that operating points threshold: the patient is flagged when either eye is).
    """
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities)
    patients = np.asarray(patient_ids).astype(str)
    if by == "referable":
        worse = referable_score(probabilities)
    elif by == "expected_grade":
        worse = probabilities @ np.arange(probabilities.shape[1])
    else:
        raise ValueError(f"by={by!r}")
    order = np.lexsort((-worse, patients))  # per patient, the worse-looking eye first
    unique, first, inverse = np.unique(patients[order], return_index=True, return_inverse=True)
    rows = order[first]
    worst_label = np.full(len(unique), np.iinfo(np.int64).min)
    np.maximum.at(worst_label, inverse.reshape(-1), labels[order].astype(np.int64))
    return worst_label, probabilities[rows]


def size_warnings(labels, num_classes: int, unit: str = "images") -> list[str]:
    """Why a set of rows is too small for its intervals to mean anything (empty: it is not)."""
    labels = np.asarray(labels)
    if num_classes > REFERABLE_GRADE:
        referable = int((labels >= REFERABLE_GRADE).sum())
        groups = {"referable": referable, "non-referable": len(labels) - referable}
    else:
        groups = {f"grade {c}": int((labels == c).sum()) for c in range(num_classes)}
    small = {g: n for g, n in groups.items() if n < MIN_PER_GROUP}
    if not small:
        return []
    return [
        f"only {', '.join(f'{n} {g}' for g, n in small.items())} {unit} (fewer than "
        f"{MIN_PER_GROUP}): intervals withheld, figures unreliable"
    ]


def summarize(
    labels,
    probabilities,
    thresholds: dict | None = None,
    *,
    patient_ids=None,
    out_of_fold: dict | None = None,
    bootstrap_rounds=1000,
    seed: int = 0,
    unit: str = "images",
):
    """Every number for one set of predictions, with cluster-bootstrap intervals.

    Args:
        labels, probabilities: [N] grades and [N, K] probabilities.
        thresholds: operating points fitted elsewhere (validation or a calibration file),
            applied unchanged; None: no operating points (never fitted here).
        patient_ids: [N] patient ids for the bootstrap's clusters; None: each row its own.
        out_of_fold: per-row thresholds (``out_of_fold_thresholds``) to measure the operating
            points with instead of ``thresholds``, on the split they were fitted on.
        bootstrap_rounds: resamples (0: no intervals).
        unit: what a row is, for warnings.
    """
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities)
    k = probabilities.shape[1]
    predicted = probabilities.argmax(1)
    confusion = metrics.confusion_matrix(labels, predicted, k)
    rows = confusion.sum(1, keepdims=True)
    warnings = size_warnings(labels, k, unit)
    boot = None
    if bootstrap_rounds and len(labels) and not warnings:
        boot = ClusterBootstrap(patient_ids, len(labels), rounds=bootstrap_rounds, seed=seed)
    out = {
        "count": int(len(labels)),
        "patients": int(clusters(patient_ids, len(labels)).max(initial=-1) + 1),
        "accuracy": metrics.accuracy(confusion),
        "kappa": metrics.quadratic_weighted_kappa(confusion),
        "confusion": confusion.tolist(),
        "confusion_normalized": (confusion / np.maximum(rows, 1)).tolist(),
        "per_class": per_class(confusion),
        "roc_auc": [_auc(labels == c, probabilities[:, c]) for c in range(k)],
        "average_precision": [_ap(labels == c, probabilities[:, c]) for c in range(k)],
        "calibration": expected_calibration_error(labels, probabilities),
        "warnings": warnings,
    }
    if k > REFERABLE_GRADE:
        referable = labels >= REFERABLE_GRADE
        score = referable_score(probabilities)
        out["referable"] = {
            "prevalence": float(referable.mean()) if len(labels) else 0.0,
            "auc": _auc(referable, score),
            "average_precision": _ap(referable, score),
        }
        if thresholds:
            points = {}
            for name, t in thresholds.items():
                used = t if out_of_fold is None else out_of_fold[name]
                point = {"threshold": float(t), **at_threshold(labels, probabilities, used)}
                point["out_of_fold"] = out_of_fold is not None
                if boot is not None:
                    sens, spec = boot.rates(referable, score >= np.asarray(used))
                    point["sensitivity_95"] = boot.interval(sens)
                    point["specificity_95"] = boot.interval(spec)
                else:
                    point["sensitivity_95"] = point["specificity_95"] = None
                points[name] = point
            out["referable"]["operating_points"] = points
    if boot is not None:
        out["bootstrap_95"] = _intervals(boot, labels, probabilities)
    elif bootstrap_rounds and len(labels):
        out["bootstrap_95"] = None
    return out


def fitted_grade_figures(labels, grades, num_classes, *, patient_ids=None, rounds=1000, seed=0):
    """Accuracy and kappa of already decided ``grades``, with a cluster-bootstrap interval of
    kappa (None when ``rounds`` is 0 or the rows are too few)."""
    labels = np.asarray(labels)
    confusion = metrics.confusion_matrix(labels, grades, num_classes)
    out = {
        "accuracy": metrics.accuracy(confusion),
        "kappa": metrics.quadratic_weighted_kappa(confusion),
        "confusion": confusion.tolist(),
        "kappa_95": None,
    }
    if rounds and len(labels) and not size_warnings(labels, num_classes):
        boot = ClusterBootstrap(patient_ids, len(labels), rounds=rounds, seed=seed)
        out["kappa_95"] = boot.interval(boot.kappa(labels, grades, num_classes))
    return out
