"""What a training config may ask for: names and ranges, checked before TensorFlow loads.

train.py runs ``check`` right after its flags are parsed, so a mistyped value costs one line
and exit code 2, not the seconds and the gigabyte TensorFlow takes to start; ``loop.train``
runs it again for callers of the library. Checks that need the data (the manifest, the number
of replicas) stay in ``loop.check_config``.
"""

from __future__ import annotations

from effdr_tf.errors import EffdrError

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
OPTIMIZERS = ("rmsprop", "adam", "sgd")
SCHEDULES = ("exponential", "step", "plateau", "constant")
# How train.learning_rate follows the global batch (recipes.base_learning_rate): "linear" and
# "sqrt" state it per 256 images, "none" takes it as it is.
LR_SCALINGS = ("linear", "sqrt", "none")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
BEST_METRICS = ("kappa", "accuracy", "loss")
# effdr_tf.models.heads, repeated here so that checking flags does not import Keras.
HEADS = ("softmax", "regression", "ordinal")
REGRESSION_LOSSES = ("mse", "smooth_l1")


def _at_least(name: str, value, low) -> None:
    if value < low:
        raise EffdrError(f"{name}={value}: must be at least {low}")


def _choice(name: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise EffdrError(f"{name}={value!r}: choose one of {', '.join(choices)}")


def _fraction(name: str, value, *, closed: bool = False) -> None:
    if not (0.0 <= value <= 1.0 if closed else 0.0 <= value < 1.0):
        raise EffdrError(f"{name}={value}: must be in [0, 1{']' if closed else ')'}")


def check_tpu_paths(tpu: str | None, model_dir: str | None, data_dir: str | None) -> None:
    """Refuses local folders for a TPU node.

    A TPU node (``--tpu=NAME`` or a ``grpc://`` address) runs the input pipeline and the
    checkpoint writes on its own hosts, which reach Cloud Storage but not this machine's disk:
    a local path would fail only after the TPU is connected and the model built. A TPU VM
    (``tpu`` unset or ``"local"``) is the machine the paths are on. Here, not in
    ``distribute``, so that train.py refuses before TensorFlow loads; ``make_strategy`` runs it
    too for callers of the library.

    Args:
        tpu: the ``--tpu`` flag; ``None`` or ``"local"`` for a TPU VM.
        model_dir: the run's folder.
        data_dir: the builder's output folder.

    Raises:
        EffdrError: naming the flag and the path that is not a ``gs://`` path.
    """
    if not tpu or tpu == "local":
        return
    for flag, path in (("--model_dir", model_dir), ("--data_dir", data_dir)):
        if path and not str(path).startswith("gs://"):
            raise EffdrError(
                f"{flag}={path}: --tpu={tpu} is a TPU node, which reads and writes only Cloud "
                "Storage; give a gs:// path (or run on a TPU VM without --tpu)"
            )


def check(config) -> None:
    """Raises ``EffdrError`` naming the first setting of ``config`` out of its range."""
    data, train, augment = config.data, config.train, config.augment
    _at_least("train.epochs", train.epochs, 1)
    _at_least("train.steps_per_epoch", train.steps_per_epoch, 0)
    _at_least("data.batch_size", data.batch_size, 1)
    _at_least("data.eval_batch_size", data.eval_batch_size, 1)
    _at_least("data.image_size", data.image_size, 0)
    if not 0.0 < data.eval_crop_fraction <= 1.0:
        raise EffdrError(f"data.eval_crop_fraction={data.eval_crop_fraction}: must be in (0, 1]")
    if not train.learning_rate > 0:
        raise EffdrError(f"train.learning_rate={train.learning_rate}: must be positive")
    _choice("train.optimizer", train.optimizer, OPTIMIZERS)
    _choice("train.schedule", train.schedule, SCHEDULES)
    _choice("train.lr_scaling", train.lr_scaling, LR_SCALINGS)
    _choice("train.mixed_precision", train.mixed_precision, PRECISIONS)
    _choice("train.best_metric", train.best_metric, BEST_METRICS)
    _at_least("train.warmup_epochs", train.warmup_epochs, 0)
    _at_least("train.freeze_backbone_epochs", train.freeze_backbone_epochs, 0)
    _at_least("train.steps_per_execution", train.steps_per_execution, 0)
    _at_least("train.checkpoint_every_steps", train.checkpoint_every_steps, 1)
    _at_least("train.accumulation_steps", train.get("accumulation_steps", 1), 1)
    _at_least("train.max_skipped_steps", train.get("max_skipped_steps", 50), 1)
    _at_least("train.keep_checkpoints", train.keep_checkpoints, 1)
    _at_least("train.log_every_steps", train.log_every_steps, 1)
    _at_least("train.weight_decay", train.weight_decay, 0)
    _fraction("train.label_smoothing", train.label_smoothing)
    head = config.model.get("head", "softmax")
    _choice("model.head", head, HEADS)
    _choice("train.regression_loss", train.get("regression_loss", "mse"), REGRESSION_LOSSES)
    if head != "softmax" and train.label_smoothing:
        raise EffdrError(
            f"train.label_smoothing={train.label_smoothing}: smooths softmax targets; the "
            f"{head} head has none (set it to 0)"
        )
    _fraction("train.ema_decay", train.ema_decay)
    if not (config.model.bn_momentum < 0 or 0 <= config.model.bn_momentum < 1):
        raise EffdrError(
            f"model.bn_momentum={config.model.bn_momentum}: must be in [0, 1), or negative "
            "for auto (by steps per epoch)"
        )
    selftrain = config.get("selftrain")
    fraction = selftrain.pseudo_fraction if selftrain is not None else 0.5
    if not 0.0 < fraction < 1.0:
        raise EffdrError(f"selftrain.pseudo_fraction={fraction}: must be in (0, 1)")
    noise = selftrain.get("noise", "recipe") if selftrain is not None else "recipe"
    if noise not in ("recipe", "paper"):
        raise EffdrError(f"selftrain.noise={noise!r}: choose recipe or paper")
    _at_least("augment.num_layers", augment.num_layers, 0)
    if not 0.0 <= augment.magnitude <= augment.max_magnitude:
        raise EffdrError(
            f"augment.magnitude={augment.magnitude}: must be in [0, augment.max_magnitude="
            f"{augment.max_magnitude}]"
        )
