"""Host-side costs of the training loop, on two logical CPU devices (MirroredStrategy).

1. Time per step of a tiny model, where dispatch and host reads dominate: the loop as it was
   (float32 images host -> device; after every step the loss, the step counter and the
   confusion matrix read back, and the learning rate computed eagerly from the optimizer's
   counter) against the loop as it is (uint8 images; one call per step whose figures, the
   learning rate included, are computed on the device and read after the next call is queued).
   Both sides run the same trainer on the same data, alternating, in one process.
2. The EMA swap before validation: one eager assignment per variable against one traced call.
3. The checkpoint of a one-device run at 456 px with and without the input iterator (its
   shuffle buffer of ``data.shuffle_buffer`` encoded records).

    python benchmarks/host_step.py --steps=40 --rounds=3

The last line is ``ratio=<before / after time per step> ...``.
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

_STEPS = flags.DEFINE_integer("steps", 40, "Timed steps per side per round.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds.")
_SIZE = flags.DEFINE_integer("checkpoint_image_size", 456, "Image side for the checkpoint part.")
_VARIANT = flags.DEFINE_string("checkpoint_variant", "b0", "Model in the checkpoint part.")
_BUFFER = flags.DEFINE_integer("shuffle_buffer", 2048, "data.shuffle_buffer (the default).")


def _tiny_config(data_dir):
    from tests import tiny_config

    config = tiny_config.get_config()
    config.data.data_dir = data_dir
    config.data.batch_size = 16
    config.train.steps_per_epoch = 10_000
    config.train.validation_split = ""
    return config


def step_timings(strategy, data_dir, work):
    from effdr_tf.evaluation import metrics
    from effdr_tf.pipeline import input as pipeline
    from effdr_tf.training import loop

    t = loop.Trainer(_tiny_config(data_dir), os.path.join(work, "steps"), strategy, False)
    t._refresh_trainability(0)
    old_iterator = iter(
        strategy.distribute_datasets_from_function(
            lambda ctx: pipeline.make_dataset(t.config, "train", input_context=ctx)
        )
    )
    k = t.setup.num_classes

    def before(n):
        confusion = tf.zeros([k, k], tf.int64).numpy()
        for _ in range(n):
            figures = t._train_fn(old_iterator, tf.constant(1))
            float(figures["loss"].numpy())
            int(t.step.numpy())
            confusion += figures["confusion"].numpy()
            metrics.quadratic_weighted_kappa(confusion)
            float(t.schedule(t.optimizer.iterations))

    def after(n):
        confusion = tf.zeros([k, k], tf.int64).numpy()
        pending = None
        for _ in range(n):
            figures = t._train_fn(t.iterator, tf.constant(1))
            if pending is not None:
                values = {name: v.numpy() for name, v in pending.items()}
                confusion += values["confusion"]
                metrics.quadratic_weighted_kappa(confusion)
            pending = figures
        {name: v.numpy() for name, v in pending.items()}

    sides = {"before": before, "after": after}
    for fn in sides.values():
        fn(3)  # trace, fill buffers
    times = {name: [] for name in sides}
    for r in range(_ROUNDS.value):
        for name in list(sides) if r % 2 == 0 else list(sides)[::-1]:
            t0 = time.perf_counter()
            sides[name](_STEPS.value)
            times[name].append((time.perf_counter() - t0) / _STEPS.value)
    return {name: statistics.median(v) for name, v in times.items()}, t


def swap_timings(trainer):
    ema = trainer.ema
    sides = {"eager": ema._exchange, "traced": ema.swap}
    for fn in sides.values():
        fn()
    times = {name: [] for name in sides}
    for _ in range(_ROUNDS.value):
        for name, fn in sides.items():
            t0 = time.perf_counter()
            for _ in range(10):
                fn()
            times[name].append((time.perf_counter() - t0) / 10)
    return {name: statistics.median(v) for name, v in times.items()}, len(ema.averages)


def checkpoint_sizes(work):
    """Bytes of one checkpoint with and without the iterator, after one batch was drawn."""
    from benchmarks import synthetic_shards
    from configs import default
    from effdr_tf.training import loop

    data_dir = os.path.join(work, "big")
    synthetic_shards.build(data_dir, size=_SIZE.value, num_images=64)
    sizes = {}
    for with_input in (False, True):
        config = default.get_config(_VARIANT.value)
        config.data.data_dir = data_dir
        config.data.batch_size = 8
        config.data.shuffle_buffer = _BUFFER.value
        config.augment.name = "none"
        config.train.checkpoint_input = with_input
        config.train.deterministic = False
        config.train.validation_split = ""
        model_dir = os.path.join(work, f"ckpt_{with_input}")
        t = loop.Trainer(config, model_dir, tf.distribute.get_strategy(), progress=False)
        next(t.iterator)  # fills the shuffle buffer
        t.checkpoints.save(0)
        folder = os.path.join(model_dir, "checkpoints")
        sizes[with_input] = sum(
            os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder) if "ckpt-0" in n
        )
    return sizes


def main(argv):
    del argv
    from benchmarks import synthetic_shards

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with tempfile.TemporaryDirectory() as work:
        data_dir = os.path.join(work, "shards")
        synthetic_shards.build(data_dir, size=32, num_images=64)
        steps, trainer = step_timings(strategy, data_dir, work)
        print(
            f"tiny model at 32 px, batch 16 on 2 replicas, time per step: reads every step "
            f"{steps['before'] * 1e3:.1f} ms, read a call late {steps['after'] * 1e3:.1f} ms"
        )
        swap, count = swap_timings(trainer)
        print(
            f"EMA swap of {count} variables on 2 replicas: eager {swap['eager'] * 1e3:.1f} ms, "
            f"traced {swap['traced'] * 1e3:.1f} ms"
        )
        sizes = checkpoint_sizes(work)
        print(
            f"checkpoint of {_VARIANT.value} at {_SIZE.value} px, shuffle buffer "
            f"{_BUFFER.value}: {sizes[False] / 1e6:.1f} MB without the iterator, "
            f"{sizes[True] / 1e6:.1f} MB with it"
        )
    print(
        f"ratio={steps['before'] / steps['after']:.3f} time per step, reads every step over a "
        f"call late; swap_ratio={swap['eager'] / swap['traced']:.2f} eager over traced; "
        f"checkpoint_ratio={sizes[True] / sizes[False]:.2f} with over without the iterator"
    )


if __name__ == "__main__":
    app.run(main)
