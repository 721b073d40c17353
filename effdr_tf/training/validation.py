"""Validation during training: the split in fixed-shape batches, scored by a step traced once.

Every batch has one shape (the last one padded, with a mask), so the evaluation step is traced
once per run and a TPU compiles it once; the padding is dropped before any metric.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from effdr_tf.models import heads
from effdr_tf.pipeline import input as pipeline


class Validation:
    """Scores splits with the model, under the strategy, on every worker."""

    def __init__(
        self, config, model, strategy, *, image_size: int, head="softmax", num_classes=None
    ):
        self.config = config
        self.head = head
        self.num_classes = num_classes
        self.model = model
        self.strategy = strategy
        replicas = strategy.num_replicas_in_sync
        batch_size = int(config.data.eval_batch_size)
        self.batch_size = max(replicas, batch_size - batch_size % replicas)  # divides evenly
        self.image_size = int(image_size)
        self.traces = 0  # how often the step was traced (benchmarks, tests)
        self._step = None

    def dataset(self, split: str) -> tf.data.Dataset:
        """(images, labels, mask) batches of ``batch_size``; mask is False on the padding."""
        batch, size = self.batch_size, self.image_size
        ds = pipeline.make_dataset(self.config, split, training=False, batch_size=batch)

        def pad(images, labels):
            n = tf.shape(labels)[0]
            missing = batch - n
            images = tf.pad(images, [[0, missing], [0, 0], [0, 0], [0, 0]])
            labels = tf.pad(labels, [[0, missing]], constant_values=-1)
            mask = tf.range(batch) < n
            images = tf.ensure_shape(images, [batch, size, size, 3])
            return images, tf.ensure_shape(labels, [batch]), tf.ensure_shape(mask, [batch])

        return ds.map(pad)

    def _make_step(self):
        def forward(images, labels, mask):
            outputs = self.model(images, training=False)
            probs = heads.probabilities(outputs, self.head, self.num_classes)
            return probs, labels, mask

        @tf.function
        def step(images, labels, mask):
            self.traces += 1  # Python: runs at trace time only
            return self.strategy.run(forward, args=(images, labels, mask))

        return step

    def predict(self, split: str):
        """(labels, probabilities) for every example of ``split``, padding dropped."""
        if self._step is None:
            self._step = self._make_step()
        ds = self.strategy.experimental_distribute_dataset(self.dataset(split))
        local = self.strategy.experimental_local_results
        labels, probabilities = [], []
        for images, batch_labels, mask in ds:
            probs, ys, keep = self._step(images, batch_labels, mask)
            for p, y, m in zip(local(probs), local(ys), local(keep), strict=True):
                m = m.numpy()
                probabilities.append(p.numpy()[m])
                labels.append(y.numpy()[m])
        return np.concatenate(labels), np.concatenate(probabilities)
