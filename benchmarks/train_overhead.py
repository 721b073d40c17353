"""What train.py's loop costs: its images/s against a bare ``model.fit``, same model and input.

Both train the same EfficientNet (built by ``loop.build_model`` from one config) with the same
optimizer and loss on the same ``effdr_tf.pipeline.make_dataset`` stream, built here from
synthetic fundus photographs:

* ours: ``effdr_tf.training.loop.train`` as ``train.py`` runs it: TensorBoard scalars every
  ``--log_every`` steps, the progress bar with kappa, the per-step NaN check, a checkpoint every
  ``--checkpoint_every`` steps (the default config's 500: none inside these short epochs; the
  epoch-end checkpoint, validation and export are outside the timed loop, as fit's callbacks
  are). EMA is off: it is part of a recipe, not of the loop, and the peer has none;
* peer: ``model.compile(optimizer, loss, jit_compile=False)`` then ``model.fit`` with no
  callbacks.

Each side runs ``--epochs`` epochs of ``--steps`` steps; the first epoch (tracing) is dropped
and images/s is the mean of the rest. Rounds alternate who goes first.

    python benchmarks/train_overhead.py --variant=b0 --image_size=128 --steps=30

The last line is ``ratio=<ours / peer, images/s>``.
"""

import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402

from benchmarks import synthetic_shards  # noqa: E402

_VARIANT = flags.DEFINE_string("variant", "b0", "EfficientNet variant.")
_SIZE = flags.DEFINE_integer("image_size", 128, "Image side.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Global batch.")
_STEPS = flags.DEFINE_integer("steps", 30, "Steps per epoch.")
_EPOCHS = flags.DEFINE_integer("epochs", 3, "Epochs per side per round (the first is dropped).")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Alternating rounds.")
_LOG_EVERY = flags.DEFINE_integer("log_every", 10, "Our TensorBoard scalar interval (steps).")
_CHECKPOINT_EVERY = flags.DEFINE_integer("checkpoint_every", 500, "Our checkpoint interval.")


def make_config(data_dir):
    from configs import default

    config = default.get_config(_VARIANT.value)
    config.data.data_dir = data_dir
    config.data.batch_size = _BATCH.value
    config.data.train_crop = "fundus"
    config.augment.weights = "thesis"
    config.train.epochs = _EPOCHS.value
    config.train.steps_per_epoch = _STEPS.value
    config.train.ema_decay = 0.0
    config.train.log_every_steps = _LOG_EVERY.value
    config.train.checkpoint_every_steps = _CHECKPOINT_EVERY.value
    config.train.validation_split = ""
    config.train.export = False
    return config


def ours(data_dir, model_dir):
    """Images/s per epoch from log.csv (the step loop, logging and checkpoints included)."""
    import csv

    from effdr_tf.training import loop

    loop.train(make_config(data_dir), model_dir, progress=True)
    with open(os.path.join(model_dir, "log.csv")) as f:
        rates = [float(row["images_per_second"]) for row in csv.DictReader(f)]
    return statistics.mean(rates[1:])


def peer(data_dir):
    """Images/s per epoch of a bare model.fit, timed from epoch begin to epoch end."""
    import keras
    import tensorflow as tf

    from effdr_tf.pipeline import input as pipeline
    from effdr_tf.training import loop, recipes

    config = make_config(data_dir)
    keras.utils.set_random_seed(0)
    setup = loop.check_config(config, tf.distribute.get_strategy())
    model = loop.build_model(config, setup)
    schedule = recipes.make_schedule(config.train, setup.steps_per_epoch, setup.global_batch)
    model.compile(
        optimizer=recipes.make_optimizer(config.train, schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    times = []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    model.fit(
        pipeline.make_dataset(config, "train"),
        epochs=config.train.epochs,
        steps_per_epoch=setup.steps_per_epoch,
        callbacks=[Clock()],
        verbose=1,
    )
    return statistics.mean(setup.steps_per_epoch * setup.global_batch / t for t in times[1:])


def main(argv):
    del argv
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = os.path.join(tmp, "data")
        synthetic_shards.build(data_dir, _SIZE.value, max(200, _BATCH.value * 8))
        results = {"ours": [], "peer": []}
        for r in range(_ROUNDS.value):
            order = ("ours", "peer") if r % 2 == 0 else ("peer", "ours")
            for who in order:
                if who == "ours":
                    rate = ours(data_dir, os.path.join(tmp, f"run{r}"))
                else:
                    rate = peer(data_dir)
                results[who].append(rate)
                print(f"round {r + 1} {who}: {rate:.1f} images/s", flush=True)
    mine, theirs = statistics.median(results["ours"]), statistics.median(results["peer"])
    print(
        f"{_VARIANT.value} {_SIZE.value}px batch {_BATCH.value}: train.py loop {mine:.1f} "
        f"images/s, bare model.fit {theirs:.1f} images/s"
    )
    print(f"ratio={mine / theirs:.3f}")


if __name__ == "__main__":
    app.run(main)
