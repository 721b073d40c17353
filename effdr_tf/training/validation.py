"""Validation during training: the split in fixed-shape batches, scored by a step traced once.

Every batch has one shape (the last one padded, with a mask), so the evaluation step is traced
once per run and a TPU compiles it once; the padding is dropped before any metric.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from effdr_tf.models import heads
from effdr_tf.pipeline import input as pipeline
from effdr_tf.training import distribute


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

    def dataset(self, split: str, input_context=None) -> tf.data.Dataset:
        """(images, labels, mask) batches of ``batch_size`` (per replica with
        ``input_context``: this worker's part of the split); mask is False on the padding."""
        batch, size = self.batch_size, self.image_size
        ds = pipeline.make_dataset(
            self.config, split, training=False, batch_size=batch, input_context=input_context
        )
        if input_context is not None:
            batch = input_context.get_per_replica_batch_size(batch)

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
        """(labels, probabilities) for every example of ``split``, padding dropped.

        On several workers each worker scores its own part of the split (the forward pass
        holds no collective, so parts may differ in length) and the parts are then gathered,
        so every worker holds every prediction; on one, the whole split in order.
        """
        if self._step is None:
            self._step = self._make_step()
        workers = distribute.num_workers(self.strategy)
        if workers > 1:
            ds = self.strategy.distribute_datasets_from_function(
                lambda ctx: self.dataset(split, ctx)
            )
        else:
            ds = self.strategy.experimental_distribute_dataset(self.dataset(split))
        local = self.strategy.experimental_local_results
        labels, probabilities = [], []
        for images, batch_labels, mask in ds:
            probs, ys, keep = self._step(images, batch_labels, mask)
            for p, y, m in zip(local(probs), local(ys), local(keep), strict=True):
                m = m.numpy()
                probabilities.append(p.numpy()[m])
                labels.append(y.numpy()[m])
        labels, probabilities = np.concatenate(labels), np.concatenate(probabilities)
        if workers > 1:
            labels, probabilities = self._gather(labels, probabilities)
        return labels, probabilities

    def _gather(self, labels, probabilities):
        """Every worker's predictions on every worker, in worker order."""
        table = np.concatenate([labels[:, None].astype(np.float32), probabilities], axis=1)
        local_replicas = len(self.strategy.extended.worker_devices)
        parts = np.array_split(table, local_replicas)
        values = self.strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(parts[ctx.replica_id_in_sync_group % local_replicas])
        )
        whole = self.strategy.gather(values, axis=0).numpy()
        return whole[:, 0].astype(labels.dtype), whole[:, 1:]
