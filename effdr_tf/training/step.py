"""The replica step: the loss, float16 loss scaling that every replica agrees on, the update
and the exponential moving average of the weights.

One step on one replica, called through ``strategy.run``:

1. forward and backward pass on the replica's share of the global batch (the loss is averaged
   over the global batch, so summing over replicas gives the single-device loss);
2. one all-reduce (SUM) of the gradients, together with each replica's own "my gradients are
   not finite" flag, unconditionally on every replica and worker;
3. under float16 the gradients are unscaled and the step is applied only if every replica's
   gradients and their sum are finite. That decision is made from all-reduced values, so every
   replica and worker takes the same one, and the branch holds no collective: each device
   updates its own copy of the weights (``strategy.extended.update``);
4. the EMA of the weights is updated the same way, per device, from the replica context (as
   Model Garden's ExponentialMovingAverage optimizer does), so no averaged weight is computed
   once and copied to every device.

Keras' ``LossScaleOptimizer`` is not used: handed per-replica gradients, it decides "finite"
from the first local replica only, so an overflow on another replica is applied.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from effdr_tf.errors import EffdrError
from effdr_tf.models import heads
from effdr_tf.training import recipes

_SUM = tf.distribute.ReduceOp.SUM


def _maybe_merge_call(fn, *args):
    """``fn(strategy, *args)`` in the cross-replica context where the strategy needs one (the
    way Keras' optimizers apply their updates), else directly."""
    return tf.__internal__.distribute.interim.maybe_merge_call(
        fn, tf.distribute.get_strategy(), *args
    )


def _tf_variable(variable):
    return variable.value if isinstance(variable, keras.Variable) else variable


def _only_if(ok, update):
    """Runs ``update`` (a per-device variable update, no collective inside); with ``ok`` (a
    bool tensor) only where it holds."""

    def run():
        update()
        return tf.constant(True)

    return run() if ok is None else tf.cond(ok, run, lambda: tf.constant(False))


def all_finite(tensors) -> tf.Tensor:
    return tf.reduce_all([tf.reduce_all(tf.math.is_finite(t)) for t in tensors])


class LossScale(tf.Module):
    """Dynamic loss scale for float16 training.

    The loss is multiplied by ``scale`` before the backward pass; a step whose gradients are
    not finite is skipped and halves the scale; ``growth_steps`` finite steps in a row double
    it. The numbers are Keras' LossScaleOptimizer defaults (2**15, 2000), themselves those of
    Micikevicius et al. 2018 ("Mixed precision training").
    """

    def __init__(self, initial: float = 2.0**15, growth_steps: int = 2000):
        super().__init__(name="loss_scale")
        self.growth_steps = int(growth_steps)
        on_write = tf.VariableSynchronization.ON_WRITE
        first = tf.VariableAggregation.ONLY_FIRST_REPLICA
        self.scale = tf.Variable(
            initial, dtype=tf.float32, trainable=False, name="scale",
            synchronization=on_write, aggregation=first,
        )  # fmt: skip
        self.good_steps = tf.Variable(
            0, dtype=tf.int64, trainable=False, name="good_steps",
            synchronization=on_write, aggregation=first,
        )  # fmt: skip
        # Steps skipped in a row: the training loop stops a run whose gradients stay
        # non-finite instead of halving the scale to zero and skipping every later step.
        self.skipped_in_row = tf.Variable(
            0, dtype=tf.int64, trainable=False, name="skipped_in_row",
            synchronization=on_write, aggregation=first,
        )  # fmt: skip

    @property
    def state(self) -> list[tf.Variable]:
        return [self.scale, self.good_steps, self.skipped_in_row]

    def next_values(self, finite):
        """(scale, good_steps, skipped_in_row) after a step that was (or was not) finite; no
        branch."""
        good = self.good_steps + 1
        grow = good >= self.growth_steps
        scale = tf.where(finite, tf.where(grow, self.scale * 2.0, self.scale), self.scale / 2.0)
        good = tf.where(tf.logical_and(finite, tf.logical_not(grow)), good, tf.zeros_like(good))
        skipped = tf.where(finite, tf.zeros_like(self.skipped_in_row), self.skipped_in_row + 1)
        return scale, good, skipped


class EMA:
    """Exponential moving average of every model weight, batch-norm statistics included.

    ``decay_t = min(decay, (1 + t) / (10 + t))`` with the warm-up ramp (tensorflow/tpu uses
    ``tf.train.ExponentialMovingAverage(decay, num_updates=global_step)``); without the ramp,
    a decay of 0.9999 lags far behind in short fine-tuning runs.

    ``update`` is called from the replica context (or outside any strategy): each device moves
    its own copy of the averages towards its own copy of the weights.
    """

    def __init__(self, model, decay: float, warmup: bool = True):
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.model_weights = list(model.weights)
        self.averages = [
            tf.Variable(w, trainable=False, name=f"ema/{w.path}", dtype=w.dtype)
            for w in self.model_weights
        ]
        self._swap = None

    def averages_of(self, variables) -> list[tf.Variable]:
        """The averages of the given model weights."""
        by_weight = {id(w): a for w, a in zip(self.model_weights, self.averages, strict=True)}
        return [by_weight[id(v)] for v in variables if id(v) in by_weight]

    def decay_at(self, step) -> tf.Tensor:
        step = tf.cast(step, tf.float32)
        decay = tf.constant(self.decay, tf.float32)
        if self.warmup:
            decay = tf.minimum(decay, (1.0 + step) / (10.0 + step))
        return decay

    def update(self, step, finite=None):
        """Moves the averages one step; with ``finite`` (a bool tensor) only where it holds."""
        decay = self.decay_at(step)
        weights = [_tf_variable(w) for w in self.model_weights]

        def move(average, weight, decay, ok):
            d = tf.cast(decay, average.dtype)
            return _only_if(
                ok,
                lambda: average.assign_sub((1.0 - d) * (average - tf.cast(weight, average.dtype))),
            )

        def per_device(distribution, decay, finite):
            for average, weight in zip(self.averages, weights, strict=True):
                distribution.extended.update(
                    average, move, args=(weight, decay, finite), group=False
                )

        _maybe_merge_call(per_device, decay, finite)

    def swap(self):
        """Exchanges model weights and averages (call twice to undo): one traced call, not one
        eager operation per variable (B5: over 700 variables, each a host round trip)."""
        if self._swap is None:
            self._swap = tf.function(self._exchange)
        self._swap()

    def _exchange(self):
        for average, weight in zip(self.averages, self.model_weights, strict=True):
            kept = tf.identity(weight)
            weight.assign(tf.cast(average, weight.dtype))
            average.assign(tf.cast(kept, average.dtype))


def check_optimizer(optimizer) -> None:
    """The update below runs ``optimizer.update_step`` itself: refuse the Keras optimizer
    features it would bypass."""
    unsupported = [
        name
        for name, value in (
            ("clipnorm", optimizer.clipnorm),
            ("clipvalue", optimizer.clipvalue),
            ("global_clipnorm", optimizer.global_clipnorm),
            ("weight_decay", optimizer.weight_decay),
            ("use_ema", optimizer.use_ema),
            ("gradient_accumulation_steps", optimizer.gradient_accumulation_steps),
        )
        if value
    ]
    if unsupported:
        raise EffdrError(f"optimizer options not supported by the training step: {unsupported}")


def apply_gradients(optimizer, grads, variables, finite=None) -> None:
    """Applies gradients that are already summed over replicas (the same on every replica).

    Each device updates its own copy of each variable; with ``finite`` (a bool tensor that is
    the same on every replica) a non-finite step changes neither weights, optimizer slots nor
    the iteration count. Call from the replica context or outside any strategy.
    """
    pairs = [(g, _tf_variable(v)) for g, v in zip(grads, variables, strict=True) if g is not None]
    learning_rate = optimizer.learning_rate
    iterations = _tf_variable(optimizer.iterations)
    increment = tf.constant(1, iterations.dtype) if finite is None else tf.cast(finite, tf.int64)

    def update(variable, grad, lr, ok):
        return _only_if(ok, lambda: optimizer.update_step(grad, variable, lr))

    def per_device(distribution, pairs, lr, ok, increment):
        for grad, variable in pairs:
            distribution.extended.update(variable, update, args=(grad, lr, ok), group=False)
        distribution.extended.update(
            iterations, lambda v, n: v.assign_add(tf.cast(n, v.dtype)), args=(increment,)
        )

    _maybe_merge_call(per_device, pairs, learning_rate, finite, increment)


def _assign_per_device(variable, value) -> None:
    _maybe_merge_call(
        lambda distribution, value: distribution.extended.update(
            variable, lambda v, x: v.assign(x), args=(value,)
        ),
        value,
    )


class ReplicaStep:
    """One training step on one replica (call it through ``strategy.run``)."""

    def __init__(
        self,
        model,
        optimizer,
        *,
        num_classes: int,
        global_batch: int,
        num_replicas: int,
        label_smoothing: float = 0.0,
        class_weights=None,
        weight_decay: float = 0.0,
        loss_scale: LossScale | None = None,
        ema: EMA | None = None,
        head: str = "softmax",
        regression_loss: str = "mse",
        accumulation_steps: int = 1,
    ):
        check_optimizer(optimizer)
        self.accumulation_steps = int(accumulation_steps)
        self.head = heads.check(head)
        self.regression_loss = regression_loss
        self.model = model
        self.optimizer = optimizer
        self.num_classes = int(num_classes)
        self.global_batch = int(global_batch)
        self.num_replicas = int(num_replicas)
        self.label_smoothing = float(label_smoothing)
        self.class_weights = (
            tf.constant(class_weights, tf.float32) if class_weights else None
        )  # fmt: skip
        self.weight_decay = float(weight_decay)
        self.loss_scale = loss_scale
        self.ema = ema

    def loss_and_gradients(self, images, labels):
        """(loss, L2 term, head outputs, gradients) on this replica's share of the global batch.

        The loss is averaged over the global batch and the L2 term split across replicas, so
        summing over replicas gives the single-device values; with gradient accumulation each
        of the ``accumulation_steps`` parts carries its share of the L2 term, so the parts sum
        to one step's loss and gradients. Under float16 the gradients are those of the scaled
        loss.
        """
        # Integer grades [B], or targets [B, K] (a self-training student's batches: one-hot
        # grades and the teacher's probabilities); other heads read a target's argmax.
        targets = labels if labels.shape.rank == 2 else None
        if targets is not None:
            labels = tf.argmax(targets, -1, output_type=tf.int32)
        with tf.GradientTape() as tape:
            logits = tf.cast(self.model(images, training=True), tf.float32)
            if self.head == "softmax":
                per_example = keras.losses.categorical_crossentropy(
                    tf.one_hot(labels, self.num_classes) if targets is None else targets,
                    logits,
                    from_logits=True,
                    label_smoothing=self.label_smoothing,
                )
            else:
                per_example = heads.per_example_loss(
                    labels,
                    logits,
                    self.head,
                    self.num_classes,
                    regression_loss=self.regression_loss,
                )
            if self.class_weights is not None:
                per_example *= tf.gather(self.class_weights, labels)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=self.global_batch)
            reg = recipes.l2_loss(self.model, self.weight_decay) / (
                self.num_replicas * self.accumulation_steps
            )
            total = loss + reg
            if self.loss_scale is not None:
                total = total * self.loss_scale.scale
        gradients = tape.gradient(total, self.model.trainable_variables)
        return loss, reg, logits, gradients

    def _micro_batches(self, images, labels):
        """This replica's share of the batch in ``accumulation_steps`` equal parts."""
        a = self.accumulation_steps
        if a == 1:
            return [(images, labels)]
        return list(zip(tf.split(images, a), tf.split(labels, a), strict=True))

    def __call__(self, images, labels, step):
        """One optimizer step on this replica's share of the global batch.

        Returns (loss, L2 term, confusion matrix, 1 if the update was applied else 0, index of
        the first trainable variable whose summed gradient is not finite or -1).
        """
        # Images travel host -> device as uint8 (a quarter of float32's bytes).
        images = tf.cast(images, tf.float32) if images.dtype == tf.uint8 else images
        variables = self.model.trainable_variables
        grads, loss, reg, confusion, kept = None, 0.0, 0.0, 0, None
        for part_images, part_labels in self._micro_batches(images, labels):
            if grads is not None:
                # The next part's forward pass waits for the last part's gradients, so one
                # part's activations are held at a time (the point of accumulating).
                with tf.control_dependencies(grads):
                    part_images = tf.identity(part_images)
            part_loss, part_reg, logits, gradients = self.loss_and_gradients(
                part_images, part_labels
            )
            if kept is None:
                kept = [i for i, g in enumerate(gradients) if g is not None]
            gradients = [gradients[i] for i in kept]
            grads = (
                gradients
                if grads is None
                else [g + h for g, h in zip(grads, gradients, strict=True)]
            )
            loss += part_loss
            reg += part_reg
            confusion += self._confusion(part_labels, logits)
        variables = [variables[i] for i in kept]
        context = tf.distribute.get_replica_context()
        finite = None
        if self.loss_scale is not None:
            # Each replica's own verdict travels in the same all-reduce as the gradients: a
            # replica whose gradients overflowed makes every replica skip the step.
            not_finite_here = 1.0 - tf.cast(all_finite(grads), tf.float32)
            *grads, not_finite = context.all_reduce(_SUM, [*grads, not_finite_here])
            scale = tf.identity(self.loss_scale.scale)
            grads = [g / scale for g in grads]
            finite = tf.logical_and(tf.equal(not_finite, 0.0), all_finite(grads))
            new_state = self.loss_scale.next_values(finite)
        else:
            grads = context.all_reduce(_SUM, grads)
        apply_gradients(self.optimizer, grads, variables, finite)
        if self.ema is not None:
            self.ema.update(step, finite)
        if self.loss_scale is not None:
            for variable, value in zip(self.loss_scale.state, new_state, strict=True):
                _assign_per_device(variable, value)
        applied = tf.constant(1, tf.int64) if finite is None else tf.cast(finite, tf.int64)
        return loss, reg, confusion, applied, first_not_finite(grads, kept)

    def _confusion(self, labels, logits):
        if labels.shape.rank == 2:
            labels = tf.argmax(labels, -1, output_type=tf.int32)
        predicted = tf.argmax(
            heads.probabilities(logits, self.head, self.num_classes), -1, output_type=tf.int32
        )
        return tf.math.confusion_matrix(labels, predicted, self.num_classes, dtype=tf.int64)


def first_not_finite(grads, indices) -> tf.Tensor:
    """The index (from ``indices``) of the first gradient with a non-finite value, else -1."""
    finite = tf.stack([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
    position = tf.argmin(tf.cast(finite, tf.int32), output_type=tf.int32)
    index = tf.gather(tf.constant(indices, tf.int64), position)
    return tf.where(tf.reduce_all(finite), tf.constant(-1, tf.int64), index)
