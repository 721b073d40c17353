"""Training recipes: learning-rate schedules, optimizers, weight decay, mixed precision.

The numbers live in configs/ with their sources; this module turns a config into objects.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from effdr_tf.errors import EffdrError
from effdr_tf.training.options import LR_SCALINGS, OPTIMIZERS, SCHEDULES


class LearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up, then a staircase (or smooth) decay counted from step 0, times a scale.

    ``lr(step) = base * decay_rate ** floor(step / decay_steps) * scale`` after warm-up and
    ``base * step / warmup_steps * scale`` during it (tensorflow/tpu utils.build_learning_rate:
    the decay is counted from step 0, not from the end of the warm-up). ``scale`` is a variable
    that reduce-on-plateau lowers.
    """

    def __init__(self, base, warmup_steps=0, decay_steps=0, decay_rate=1.0, staircase=True):
        self.base = float(base)
        self.warmup_steps = int(warmup_steps)
        self.decay_steps = int(decay_steps)
        self.decay_rate = float(decay_rate)
        self.staircase = bool(staircase)
        self.scale = tf.Variable(1.0, trainable=False, dtype=tf.float32, name="lr_scale")

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        lr = tf.constant(self.base, tf.float32)
        if self.decay_steps > 0 and self.decay_rate != 1.0:
            exponent = step / self.decay_steps
            if self.staircase:
                exponent = tf.floor(exponent)
            lr = lr * tf.pow(self.decay_rate, exponent)
        if self.warmup_steps > 0:
            warm = self.base * step / self.warmup_steps
            lr = tf.where(step < self.warmup_steps, warm, lr)
        return lr * self.scale

    def get_config(self):
        return {
            "base": self.base,
            "warmup_steps": self.warmup_steps,
            "decay_steps": self.decay_steps,
            "decay_rate": self.decay_rate,
            "staircase": self.staircase,
        }


# The reference's batch-norm momentum (tensorflow/tpu batch_norm_momentum), and how many moving
# average time constants (1 / (1 - momentum) steps) an epoch must hold under "auto".
BN_MOMENTUM_REFERENCE = 0.99
BN_TIME_CONSTANTS_PER_EPOCH = 4


def bn_momentum(setting: float, steps_per_epoch: int) -> float:
    """The batch-norm momentum: ``setting``, or for ``setting < 0`` (auto) the reference 0.99
    unless an epoch is too short for it.

    Moving averages at 0.99 trail the weights by about 100 steps. On a small dataset (40 steps
    an epoch) they never catch up with a network trained from scratch: validation, which uses
    them, stays at chance while training accuracy climbs, and a plateau schedule halves the
    rate for nothing (digits in the CIFAR layout, B0: validation 9 % after 8 epochs at 0.99,
    60 % after 2 and 91 % after 7 at 0.9; docs/training.md). Auto keeps
    ``BN_TIME_CONSTANTS_PER_EPOCH`` time constants in an epoch: 1 - 4 / steps, at most 0.99
    (any dataset over 400 steps an epoch, CIFAR's 1,400 and Kaggle's 3,900 included), at
    least 0.5.
    """
    if setting >= 0:
        return float(setting)
    auto = 1.0 - BN_TIME_CONSTANTS_PER_EPOCH / max(1, steps_per_epoch)
    return float(min(BN_MOMENTUM_REFERENCE, max(0.5, auto)))


def base_learning_rate(train_config, global_batch_size: int) -> float:
    """The rate at ``global_batch_size`` images a step.

    ``lr_scaling="linear"``: ``learning_rate`` is per 256 images and grows with the batch
    (Goyal et al. 2017, for SGD; tensorflow/tpu states its RMSProp rate so). ``"sqrt"``: per
    256 images, times ``sqrt(batch / 256)``, the rule for adaptive optimizers (Hoffer et al.
    2017; Malladi et al. 2022 derive it for Adam and RMSProp). ``"none"``: as configured.
    """
    lr = float(train_config.learning_rate)
    scaling = train_config.lr_scaling
    if scaling == "linear":
        return lr * global_batch_size / 256.0
    if scaling == "sqrt":
        return lr * math.sqrt(global_batch_size / 256.0)
    if scaling != "none":
        raise EffdrError(f"train.lr_scaling={scaling!r}: choose one of {', '.join(LR_SCALINGS)}")
    return lr


def make_schedule(train_config, steps_per_epoch: int, global_batch_size: int) -> LearningRate:
    schedule = train_config.schedule
    if schedule not in SCHEDULES:
        raise EffdrError(f"train.schedule={schedule!r}: choose one of {', '.join(SCHEDULES)}")
    decay_steps = 0
    rate = 1.0
    if schedule in ("exponential", "step"):
        decay_steps = max(1, int(round(train_config.decay_epochs * steps_per_epoch)))
        rate = train_config.decay_rate
    return LearningRate(
        base_learning_rate(train_config, global_batch_size),
        warmup_steps=int(round(train_config.warmup_epochs * steps_per_epoch)),
        decay_steps=decay_steps,
        decay_rate=rate,
        staircase=train_config.staircase,
    )


def make_optimizer(train_config, schedule) -> keras.optimizers.Optimizer:
    name = train_config.optimizer
    if name == "rmsprop":
        return keras.optimizers.RMSprop(
            schedule,
            rho=train_config.rho,
            momentum=train_config.momentum,
            epsilon=train_config.epsilon,
        )
    if name == "adam":
        return keras.optimizers.Adam(schedule, epsilon=train_config.epsilon)
    if name == "sgd":
        return keras.optimizers.SGD(schedule, momentum=train_config.momentum)
    raise EffdrError(f"train.optimizer={name!r}: choose one of {', '.join(OPTIMIZERS)}")


def start_rms_at_one(optimizer) -> None:
    """TF1's RMSProp starts its mean-square accumulators at 1, Keras' at 0: the first steps
    differ by orders of magnitude. Call after ``optimizer.build``."""
    for variable in optimizer.variables:
        if "velocity" in variable.path or "velocities" in variable.path:
            variable.assign(tf.ones_like(variable))


def l2_loss(model, weight_decay: float):
    """``weight_decay * sum(w**2) / 2`` over the non-batch-norm weights (the reference's L2
    term; Keras' decoupled ``weight_decay`` is something else)."""
    if not weight_decay:
        return tf.constant(0.0)
    terms = [
        tf.nn.l2_loss(tf.cast(v, tf.float32))
        for v in model.trainable_variables
        if not isinstance(_layer_of(model, v), keras.layers.BatchNormalization)
    ]
    return weight_decay * tf.add_n(terms) if terms else tf.constant(0.0)


def _layer_of(model, variable):
    name = variable.path.split("/")[0]
    try:
        return model.get_layer(name)
    except ValueError:
        return None


def set_precision(policy: str, strategy) -> str:
    """Sets the global Keras dtype policy; ``auto``: bfloat16 on TPU, float16 on GPU, float32
    on CPU. Returns the policy name."""
    if policy == "auto":
        if isinstance(strategy, tf.distribute.TPUStrategy):
            policy = "mixed_bfloat16"
        elif tf.config.list_logical_devices("GPU"):
            policy = "mixed_float16"
        else:
            policy = "float32"
    if policy not in ("float32", "mixed_float16", "mixed_bfloat16"):
        raise EffdrError(
            f"train.mixed_precision={policy!r}: choose auto, float32, mixed_float16 or "
            "mixed_bfloat16"
        )
    keras.mixed_precision.set_global_policy(policy)
    return policy


def steps_per_epoch(train_count: int, global_batch_size: int, configured: int = 0) -> int:
    steps = int(configured) if configured else train_count // global_batch_size
    if steps < 1:
        raise EffdrError(
            f"{train_count} training examples make no full batch of {global_batch_size}"
        )
    return steps
