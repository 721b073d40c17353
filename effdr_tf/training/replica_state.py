"""What differs between replicas and how it is reconciled: random streams, batch-norm moving
statistics and the values decisions are taken from.

Under a tf.distribute strategy every variable Keras creates is mirrored: one copy per device,
each starting from the same value. Three kinds of state must not stay that way, or must be
brought back together:

- **Random streams.** Each dropout and stochastic-depth layer keeps its Keras seed state
  (``[seed, counter]``) in a variable with aggregation NONE: every replica advances its own copy,
  in lockstep from the same start, so every replica would draw the same masks (with a global
  batch of 64 on 8 cores, 8 distinct mask patterns instead of 64). ``separate_random_streams``
  offsets each copy's seed by the replica's global id, after the model is built and after every
  restore (a checkpoint holds replica 0's state only), so an interrupted run continues the
  streams it would have drawn and a seed still fixes them all.
- **Batch-norm moving statistics.** Also aggregation NONE: without synchronised batch norm (the
  multi-worker default) each replica's averages follow its own batches and drift apart.
  ``average_moving_statistics`` replaces every copy by the replicas' mean before validation and
  export, so every worker scores and writes the same model.
- **Decisions.** A plateau step, a best checkpoint or an early stop taken from a validation
  score must be the same on every worker, or their learning rates part with no error.
  ``chief_value`` hands every worker the chief's number.
"""

from __future__ import annotations

import keras
import tensorflow as tf

# Added to a seed state's first element per global replica id: a prime far above the number
# of replicas of any pod, so no two (layer, replica) streams share a key in practice (layer
# seeds are drawn from [1, 1e9] by Keras).
REPLICA_SEED_STRIDE = 1_000_003

SEED_STATE = "seed_generator_state"


def _tf_variable(variable):
    return variable.value if isinstance(variable, keras.Variable) else variable


def seed_states(model) -> list:
    """The model's random-layer seed states (Keras variables)."""
    return [v for v in model.variables if SEED_STATE in v.path]


def moving_statistics(model) -> list:
    """Every batch-norm layer's moving mean and variance (Keras variables)."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found += [layer.moving_mean, layer.moving_variance]
    return found


def separate_random_streams(strategy, model) -> None:
    """Gives each replica its own random stream: copy r's seed becomes ``seed + r * stride``.

    Call once after building (or restoring) the model, when every copy holds replica 0's state:
    after a restore that is what the checkpoint saved. A single replica is left unchanged, so
    one-device runs draw exactly what they did before.
    """
    states = [_tf_variable(v) for v in seed_states(model)]
    if not states or strategy.num_replicas_in_sync < 2:
        return

    def offset():
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        for state in states:
            # Aggregation NONE: each replica writes its own copy.
            shift = tf.cast(replica, state.dtype) * REPLICA_SEED_STRIDE
            state.assign(state + tf.stack([shift, tf.zeros_like(shift)]))

    tf.function(lambda: strategy.run(offset))()


class MovingStatistics:
    """Averages batch-norm moving statistics over every replica and worker, in one traced call
    (one all-reduce per call, whatever the number of layers)."""

    def __init__(self, strategy, model, extra=()):
        """``extra``: more per-replica variables to average with them (their EMA averages)."""
        self.strategy = strategy
        self.variables = [_tf_variable(v) for v in [*moving_statistics(model), *extra]]
        self._fn = None

    def __call__(self) -> None:
        if not self.variables or self.strategy.num_replicas_in_sync < 2:
            return
        if self._fn is None:
            self._fn = tf.function(lambda: self.strategy.run(self._average))
        self._fn()

    def _average(self):
        context = tf.distribute.get_replica_context()
        local = [tf.identity(v) for v in self.variables]
        means = context.all_reduce(tf.distribute.ReduceOp.MEAN, local)
        for variable, mean in zip(self.variables, means, strict=True):
            variable.assign(mean)  # aggregation NONE: this replica's copy


def chief_value(strategy, value: float, chief: bool, workers: int) -> float:
    """The chief's ``value`` on every worker (``value`` itself with one worker).

    Every worker must call it at the same point: it is a collective.
    """
    if workers < 2:
        return float(value)
    # Every local replica of the chief adds [value, 1]: the ratio is the value, whatever the
    # number of replicas per worker.
    pair = tf.constant([float(value), 1.0] if chief else [0.0, 0.0], tf.float64)
    total = strategy.reduce(
        tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.identity(pair)), axis=None
    ).numpy()
    return float(total[0] / total[1])
