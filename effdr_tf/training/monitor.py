"""What a run writes for people: TensorBoard summaries, a CSV log, the terminal progress bar."""

from __future__ import annotations

import csv
import io
import os

import numpy as np
import tensorflow as tf


class Monitor:
    """TensorBoard writers (train/, eval/) and log.csv under model_dir; no-ops off the chief."""

    CSV_FIELDS = (
        "epoch",
        "step",
        "learning_rate",
        "train_loss",
        "train_accuracy",
        "train_kappa",
        "val_loss",
        "val_accuracy",
        "val_kappa",
        "images_per_second",
    )

    def __init__(self, model_dir: str, chief: bool):
        self.chief = chief
        self.model_dir = model_dir
        if chief:
            self.train = tf.summary.create_file_writer(os.path.join(model_dir, "train"))
            self.eval = tf.summary.create_file_writer(os.path.join(model_dir, "eval"))
        else:
            self.train = self.eval = tf.summary.create_noop_writer()
        self.csv_path = os.path.join(model_dir, "log.csv")

    def scalars(self, writer, values: dict, step: int) -> None:
        with writer.as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(name, float(value))

    def images(self, writer, name: str, images, step: int, max_outputs: int = 16) -> None:
        with writer.as_default(step=step):
            tf.summary.image(name, tf.cast(images, tf.float32) / 255.0, max_outputs=max_outputs)

    def confusion(self, confusion, step: int, class_names) -> None:
        if not self.chief:
            return
        image = confusion_image(confusion, class_names)
        with self.eval.as_default(step=step):
            tf.summary.image("confusion_matrix", image[tf.newaxis])

    def pr_curves(self, labels, probabilities, step: int, class_names) -> None:
        """One-vs-rest precision-recall curves per class (TensorBoard's PR-curve plugin)."""
        if not self.chief:
            return
        from tensorboard.plugins.pr_curve import summary as pr_summary

        thresholds = 51
        for c, name in enumerate(class_names):
            positive = labels == c
            scores = probabilities[:, c]
            cut = np.linspace(0, 1, thresholds)
            tp = np.array([(positive & (scores >= t)).sum() for t in cut], np.float64)
            fp = np.array([(~positive & (scores >= t)).sum() for t in cut], np.float64)
            fn = positive.sum() - tp
            tn = (~positive).sum() - fp
            precision = tp / np.maximum(tp + fp, 1)
            recall = tp / np.maximum(tp + fn, 1)
            proto = pr_summary.raw_data_pb(
                name=f"pr_curve/{c}_{name.replace(' ', '_')}",
                true_positive_counts=tp,
                false_positive_counts=fp,
                true_negative_counts=tn,
                false_negative_counts=fn,
                precision=precision,
                recall=recall,
                num_thresholds=thresholds,
            )
            with self.eval.as_default(step=step):
                tf.summary.experimental.write_raw_pb(proto.SerializeToString(), step=step)

    def hparams(self, values: dict) -> None:
        if not self.chief:
            return
        from tensorboard.plugins.hparams import api as hp

        with self.train.as_default():
            hp.hparams({k: v for k, v in values.items() if isinstance(v, int | float | str | bool)})

    def csv_row(self, row: dict) -> None:
        if not self.chief:
            return
        new = not tf.io.gfile.exists(self.csv_path)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.CSV_FIELDS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow({k: _fmt(row.get(k)) for k in self.CSV_FIELDS})
        with tf.io.gfile.GFile(self.csv_path, "a") as f:
            f.write(buf.getvalue())

    def flush(self) -> None:
        if self.chief:
            self.train.flush()
            self.eval.flush()


def _fmt(value):
    if value is None:
        return ""
    if isinstance(value, float | np.floating):
        return f"{value:.6g}"
    return value


def confusion_image(confusion, class_names) -> tf.Tensor:
    """The confusion matrix (counts and row-normalised shares) as an RGB image tensor."""
    from effdr_tf.evaluation import plots

    return tf.io.decode_png(plots.confusion_png(confusion, class_names), channels=3)
