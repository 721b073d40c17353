"""Metrics from confusion matrices: quadratic weighted kappa, accuracy, per-class recall.

Keras has no quadratic weighted kappa; ``QuadraticWeightedKappa`` is a streaming Keras metric
(Keras APIs only, any backend) and ``quadratic_weighted_kappa`` the same on a NumPy confusion
matrix. Both equal ``sklearn.metrics.cohen_kappa_score(weights="quadratic")``.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """Counts [true, predicted]; labels outside 0..num_classes-1 are ignored."""
    labels = np.asarray(labels).ravel()
    predictions = np.asarray(predictions).ravel()
    keep = (labels >= 0) & (labels < num_classes)
    flat = labels[keep] * num_classes + predictions[keep]
    return np.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def quadratic_weighted_kappa(confusion) -> float:
    """Cohen's kappa with quadratic weights from a [true, predicted] confusion matrix."""
    observed = np.asarray(confusion, np.float64)
    k = observed.shape[0]
    total = observed.sum()
    if total == 0:
        return 0.0
    i, j = np.indices((k, k))
    weights = (i - j) ** 2 / max(1, (k - 1) ** 2)
    expected = np.outer(observed.sum(1), observed.sum(0)) / total
    denominator = (weights * expected).sum()
    if denominator == 0:
        return 1.0 if (weights * observed).sum() == 0 else 0.0
    return float(1.0 - (weights * observed).sum() / denominator)


def accuracy(confusion) -> float:
    confusion = np.asarray(confusion)
    return float(np.trace(confusion) / max(1, confusion.sum()))


def recall_per_class(confusion) -> np.ndarray:
    confusion = np.asarray(confusion, np.float64)
    return np.diag(confusion) / np.maximum(confusion.sum(1), 1)


@keras.saving.register_keras_serializable(package="effdr_tf")
class QuadraticWeightedKappa(keras.metrics.Metric):
    """Streaming quadratic weighted kappa over argmax predictions (or integer predictions).

    Args:
        num_classes: number of grades.
        name: metric name.
    """

    def __init__(self, num_classes: int = 5, name: str = "kappa", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes)
        self.confusion = self.add_variable(
            shape=(self.num_classes, self.num_classes),
            initializer="zeros",
            name="confusion",
            aggregation="sum",
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        if len(y_pred.shape) > 1 and y_pred.shape[-1] != 1:
            y_pred = ops.argmax(y_pred, axis=-1)
        y_pred = ops.cast(ops.reshape(y_pred, (-1,)), "int32")
        flat = y_true * self.num_classes + y_pred
        counts = ops.bincount(flat, minlength=self.num_classes**2)[: self.num_classes**2]
        counts = ops.reshape(ops.cast(counts, self.dtype), (self.num_classes, self.num_classes))
        self.confusion.assign_add(counts)

    def result(self):
        k = self.num_classes
        observed = self.confusion
        total = ops.sum(observed)
        i = ops.cast(ops.arange(k), self.dtype)
        weights = ops.square(i[:, None] - i[None, :]) / max(1, (k - 1) ** 2)
        expected = ops.outer(ops.sum(observed, 1), ops.sum(observed, 0)) / ops.maximum(total, 1.0)
        denominator = ops.sum(weights * expected)
        return ops.where(
            denominator > 0,
            1.0 - ops.sum(weights * observed) / ops.maximum(denominator, 1e-12),
            0.0,
        )

    def reset_state(self):
        self.confusion.assign(ops.zeros_like(self.confusion))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}
