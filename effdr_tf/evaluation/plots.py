"""Figures for TensorBoard and the evaluation report (matplotlib, Agg backend, PNG bytes)."""

from __future__ import annotations

import io

import numpy as np
from sklearn import metrics as skm

from effdr_tf.evaluation import clinical, metrics


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    plt = _pyplot()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def confusion_png(confusion, class_names, title: str | None = None) -> bytes:
    """Row-normalised shares as colour, with counts and shares written in each cell."""
    plt = _pyplot()
    confusion = np.asarray(confusion)
    shares = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.8, 4.2), dpi=100)
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(class_names))
    ax.set_xticks(ticks, [str(i) for i in ticks])
    ax.set_yticks(ticks, [f"{i} {n}" for i, n in enumerate(class_names)])
    ax.set_xlabel("predicted grade")
    ax.set_ylabel("true grade")
    for i in ticks:
        for j in ticks:
            colour = "white" if shares[i, j] > 0.5 else "black"
            text = f"{confusion[i, j]}\n{shares[i, j]:.0%}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color=colour)
    kappa = metrics.quadratic_weighted_kappa(confusion)
    heading = f"accuracy {metrics.accuracy(confusion):.3f}, kappa {kappa:.3f}"
    ax.set_title(f"{title}\n{heading}" if title else heading, fontsize=9)
    return _png(fig)


def _curves(labels, probabilities, kind: str) -> bytes:
    """One-vs-rest ROC or PR curves per grade, and referable DR (grade >= 2) in black."""
    plt = _pyplot()
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities)
    fig, ax = plt.subplots(figsize=(5.0, 4.4), dpi=100)
    series = [(f"grade {c}", labels == c, probabilities[:, c], None) for c in range(
        probabilities.shape[1])]  # fmt: skip
    if probabilities.shape[1] > clinical.REFERABLE_GRADE:
        series.append(
            (
                "referable (>= 2)",
                labels >= clinical.REFERABLE_GRADE,
                clinical.referable_score(probabilities),
                "black",
            )
        )
    for name, truth, score, colour in series:
        if truth.all() or not truth.any():
            continue
        if kind == "roc":
            x, y, _ = skm.roc_curve(truth, score)
            area = skm.auc(x, y)
        else:
            y, x, _ = skm.precision_recall_curve(truth, score)
            area = skm.average_precision_score(truth, score)
        ax.plot(x, y, label=f"{name} ({area:.3f})", color=colour, lw=2 if colour else 1)
    if kind == "roc":
        ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
        ax.set_xlabel("1 - specificity")
        ax.set_ylabel("sensitivity")
        ax.set_title("ROC, one grade against the rest (AUC)", fontsize=9)
    else:
        ax.set_xlabel("recall (sensitivity)")
        ax.set_ylabel("precision")
        ax.set_title("precision-recall (average precision)", fontsize=9)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, loc="lower right" if kind == "roc" else "lower left")
    return _png(fig)


def roc_png(labels, probabilities) -> bytes:
    return _curves(labels, probabilities, "roc")


def pr_png(labels, probabilities) -> bytes:
    return _curves(labels, probabilities, "pr")


def reliability_png(calibration: dict) -> bytes:
    """Accuracy against confidence per bin (a reliability diagram), with the ECE."""
    plt = _pyplot()
    bins = [b for b in calibration["bins"] if b["count"]]
    fig, ax = plt.subplots(figsize=(4.6, 4.2), dpi=100)
    centres = [(b["low"] + b["high"]) / 2 for b in bins]
    width = calibration["bins"][0]["high"] - calibration["bins"][0]["low"]
    ax.bar(centres, [b["accuracy"] for b in bins], width=width * 0.9, label="accuracy")
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=1, label="perfect calibration")
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"reliability, ECE {calibration['ece']:.3f}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    return _png(fig)
