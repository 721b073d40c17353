"""Train-step and inference throughput of our EfficientNet against keras.applications'.

Both models are built for the same variant, input size and batch, compiled the same way, and
timed in alternating rounds in one process so machine drift hits both alike. With
``--jit=both`` it also measures ``jit_compile=True`` (XLA).

    python benchmarks/model_throughput.py --variant=b0 --image_size=224 --batch_size=16

The last line is ``ratio=<ours / keras.applications, train images/s> ...``.
"""

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from effdr_tf import models  # noqa: E402

_VARIANT = flags.DEFINE_string("variant", "b0", "b0..b7.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Square input side in pixels.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Images per step.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating timing rounds per model.")
_STEPS = flags.DEFINE_integer("steps", 3, "Steps per round.")
_JIT = flags.DEFINE_enum("jit", "both", ["off", "on", "both"], "jit_compile settings to measure.")


def _ours(variant, size):
    return models.build_efficientnet(variant, num_classes=5, input_shape=(size, size, 3))


def _keras(variant, size):
    cls = getattr(keras.applications, f"EfficientNetB{variant[1:]}")
    return cls(weights=None, input_shape=(size, size, 3), classes=5, classifier_activation=None)


def _compiled(build, jit):
    model = build(_VARIANT.value, _IMAGE_SIZE.value)
    model.compile(
        optimizer=keras.optimizers.RMSprop(1e-4, rho=0.9, momentum=0.9, epsilon=1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
    )
    return model


def _rate(fn, x, steps):
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return steps * len(x) / (time.perf_counter() - start)


def measure(jit: bool) -> dict:
    rng = np.random.default_rng(0)
    size, batch = _IMAGE_SIZE.value, _BATCH.value
    x = rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    y = rng.integers(0, 5, batch)
    contenders = {"ours": _compiled(_ours, jit), "keras": _compiled(_keras, jit)}
    rates = {(name, kind): [] for name in contenders for kind in ("train", "infer")}
    for model in contenders.values():  # warm-up: tracing and compilation
        model.train_on_batch(x, y)
        model.predict_on_batch(x)
    order = list(contenders.items())
    for _ in range(_ROUNDS.value):
        order.reverse()  # alternate who goes first, so neither gains from its position
        for name, model in order:
            rates[(name, "train")].append(
                _rate(lambda m=model: m.train_on_batch(x, y), x, _STEPS.value)
            )
            rates[(name, "infer")].append(
                _rate(lambda m=model: m.predict_on_batch(x), x, _STEPS.value)
            )
    return {key: statistics.median(values) for key, values in rates.items()}


def main(argv):
    del argv
    settings = {"off": [False], "on": [True], "both": [False, True]}[_JIT.value]
    print(
        f"EfficientNet-{_VARIANT.value} at {_IMAGE_SIZE.value} px, batch {_BATCH.value}, "
        f"backend {keras.backend.backend()}, {os.cpu_count()} CPUs; images/s (median of "
        f"{_ROUNDS.value} rounds of {_STEPS.value} steps)"
    )
    print(f"{'jit_compile':>11} {'mode':>6} {'ours':>8} {'keras.app':>9} {'ratio':>6}")
    ratios = {}
    for jit in settings:
        rates = measure(jit)
        for kind in ("train", "infer"):
            ours, theirs = rates[("ours", kind)], rates[("keras", kind)]
            ratios[(jit, kind)] = ours / theirs
            print(f"{str(jit):>11} {kind:>6} {ours:8.1f} {theirs:9.1f} {ours / theirs:6.3f}")
    first = settings[0]
    extra = ", ".join(
        f"{k[1]} jit={k[0]}: {v:.3f}" for k, v in ratios.items() if k != (first, "train")
    )
    print(
        f"ratio={ratios[(first, 'train')]:.3f} ours/keras.applications train images/s, "
        f"jit_compile={first} ({extra})"
    )


if __name__ == "__main__":
    app.run(main)
