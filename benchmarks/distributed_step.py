"""Costs in the multi-replica training step, on two logical CPU devices (MirroredStrategy).

1. EMA update per step: ours (``training.step.EMA.update`` from the replica context; each
   device averages its own copy) against the cross-replica update the loop used before
   (``average.assign(d * average + (1 - d) * weight)`` in the cross-replica context: computed
   on the first device and copied to every other one), over every weight of the model.
2. Synchronised batch norm: step time with ``model.sync_batch_norm`` on and off (the figure
   quoted in configs/default.py). Devices here share one memory; across machines the
   all-reduces cross the network and cost more.
3. Evaluation traces per run: the validation step is traced once, however many epochs.

    python benchmarks/distributed_step.py --variant=b0 --updates=50 --rounds=3

The last line is ``ratio=<cross-replica / per-device EMA update time> ...``.
"""

import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from absl import app, flags  # noqa: E402

_VARIANT = flags.DEFINE_string("variant", "b0", "EfficientNet variant for the EMA and BN parts.")
_UPDATES = flags.DEFINE_integer("updates", 50, "EMA updates per timing.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds.")
_BN_SIZE = flags.DEFINE_integer("bn_image_size", 64, "Image side for the batch-norm part.")
_BN_STEPS = flags.DEFINE_integer("bn_steps", 6, "Timed steps per side per round (BN part).")
_EPOCHS = flags.DEFINE_integer("epochs", 3, "Epochs of the evaluation-trace run.")


def ema_timings(strategy):
    from effdr_tf import models
    from effdr_tf.training import step as step_lib

    with strategy.scope():
        model = models.efficientnet(_VARIANT.value, num_classes=5, input_shape=(64, 64, 3))
        ema = step_lib.EMA(model, 0.9999)
    weights = list(model.weights)

    @tf.function
    def per_device(n):
        for i in tf.range(n):
            strategy.run(ema.update, args=(tf.cast(i, tf.int64),))

    @tf.function
    def cross_replica(n):
        for i in tf.range(n):
            decay = ema.decay_at(i)
            for average, weight in zip(ema.averages, weights, strict=True):
                d = tf.cast(decay, average.dtype)
                average.assign(d * average + (1.0 - d) * tf.cast(weight, average.dtype))

    sides = {"per_device": per_device, "cross_replica": cross_replica}
    n = tf.constant(_UPDATES.value)
    for fn in sides.values():
        fn(tf.constant(1))  # trace
    times = {k: [] for k in sides}
    for r in range(_ROUNDS.value):
        order = list(sides) if r % 2 == 0 else list(sides)[::-1]
        for name in order:
            t0 = time.perf_counter()
            sides[name](n)
            times[name].append((time.perf_counter() - t0) / _UPDATES.value)
    parameters = sum(int(tf.size(w)) for w in weights)
    return {k: statistics.median(v) for k, v in times.items()}, parameters


def bn_timings(strategy, data_dir, work):
    from configs import default
    from effdr_tf.training import loop

    def trainer(sync):
        config = default.get_config(_VARIANT.value)
        config.data.data_dir = data_dir
        config.data.batch_size = 16
        config.data.train_crop = "none"
        config.augment.name = "none"
        config.model.sync_batch_norm = sync
        config.train.steps_per_epoch = 1000
        config.train.validation_split = ""
        t = loop.Trainer(config, os.path.join(work, f"bn_{sync}"), strategy, progress=False)
        t._refresh_trainability(0)
        t._train_fn(t.iterator, tf.constant(1))  # trace
        return t

    sides = {"sync": trainer(True), "local": trainer(False)}
    times = {k: [] for k in sides}
    for r in range(_ROUNDS.value):
        order = list(sides) if r % 2 == 0 else list(sides)[::-1]
        for name in order:
            t = sides[name]
            t0 = time.perf_counter()
            for _ in range(_BN_STEPS.value):
                t._train_fn(t.iterator, tf.constant(1))
            times[name].append((time.perf_counter() - t0) / _BN_STEPS.value)
    return {k: statistics.median(v) for k, v in times.items()}


def eval_traces(strategy, work):
    from effdr_tf.training import loop
    from tests import tiny_config
    from tests.test_pipeline import build_tiny

    data_dir = os.path.join(work, "tiny")
    build_tiny(data_dir, {"train": [8] * 5, "validation": [5] * 5})
    config = tiny_config.get_config()
    config.data.data_dir = data_dir
    config.train.epochs = _EPOCHS.value
    trainer = loop.Trainer(config, os.path.join(work, "traces"), strategy, progress=False)
    trainer.run()
    return trainer.eval_traces


def main(argv):
    del argv
    from benchmarks import synthetic_shards

    # One strategy for everything: strategies made one after another in a process share
    # collective keys.
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    ema, parameters = ema_timings(strategy)
    print(
        f"EMA update over {parameters / 1e6:.2f} M weights ({_VARIANT.value}), 2 logical CPUs: "
        f"per-device {ema['per_device'] * 1e3:.2f} ms, cross-replica "
        f"{ema['cross_replica'] * 1e3:.2f} ms per step"
    )
    with tempfile.TemporaryDirectory() as work:
        data_dir = os.path.join(work, "shards")
        synthetic_shards.build(data_dir, size=_BN_SIZE.value, num_images=64)
        bn = bn_timings(strategy, data_dir, work)
        print(
            f"train step, {_VARIANT.value} at {_BN_SIZE.value} px, batch 16 on 2 replicas: "
            f"sync BN {bn['sync'] * 1e3:.0f} ms, per-replica BN {bn['local'] * 1e3:.0f} ms "
            f"(sync/local {bn['sync'] / bn['local']:.3f})"
        )
        traces = eval_traces(strategy, work)
        print(f"evaluation traces in a {_EPOCHS.value}-epoch run: {traces}")
    print(
        f"ratio={ema['cross_replica'] / ema['per_device']:.3f} EMA update time, cross-replica "
        f"over per-device; sync_bn_cost={bn['sync'] / bn['local']:.3f}; "
        f"eval_traces={traces} per {_EPOCHS.value}-epoch run"
    )


if __name__ == "__main__":
    app.run(main)
