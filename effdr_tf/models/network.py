"""The EfficientNet network: B0-B8, L2 and EfficientNet-Lite0..4 as Keras 3 functional models.

The architecture is data: one B0 stage table and one scaling table. ``architecture(variant)``
expands them into the list of blocks a variant has; the model builder and the weight importers
both read that list, so layer names and checkpoint keys can never drift apart.

Only Keras APIs are used here, so the models run under the TensorFlow, JAX and PyTorch backends.
Layer names follow ``keras.applications.efficientnet`` (``stem_conv``, ``block2a_expand_conv``,
``top_activation``, ``predictions``), which keeps its weight files loadable by name.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import keras
from keras import layers

from effdr_tf import constants
from effdr_tf.errors import EffdrError


@dataclasses.dataclass(frozen=True)
class Stage:
    """One row of the B0 table: a run of MBConv blocks with the same shape."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int


# EfficientNet-B0 (tensorflow/tpu efficientnet_builder.py, _DEFAULT_BLOCKS_ARGS).
B0_STAGES = (
    Stage(repeats=1, kernel=3, stride=1, expand=1, filters_in=32, filters_out=16),
    Stage(repeats=2, kernel=3, stride=2, expand=6, filters_in=16, filters_out=24),
    Stage(repeats=2, kernel=5, stride=2, expand=6, filters_in=24, filters_out=40),
    Stage(repeats=3, kernel=3, stride=2, expand=6, filters_in=40, filters_out=80),
    Stage(repeats=3, kernel=5, stride=1, expand=6, filters_in=80, filters_out=112),
    Stage(repeats=4, kernel=5, stride=2, expand=6, filters_in=112, filters_out=192),
    Stage(repeats=1, kernel=3, stride=1, expand=6, filters_in=192, filters_out=320),
)
B0_STEM_FILTERS = 32
B0_HEAD_FILTERS = 1280
SE_RATIO = 0.25  # of the block's input filters (tensorflow/tpu efficientnet_builder.py)
FILTER_DIVISOR = 8


@dataclasses.dataclass(frozen=True)
class Variant:
    """Compound-scaling coefficients of one model, and the family it belongs to.

    ``lite`` selects EfficientNet-Lite: no squeeze-excitation, ReLU6, and stem, head and the
    first and last stages left unscaled (tensorflow/tpu efficientnet_lite_builder.py).
    """

    width: float
    depth: float
    resolution: int
    dropout: float
    lite: bool = False


# tensorflow/tpu efficientnet_builder.py efficientnet_params() and
# efficientnet_lite_builder.py efficientnet_lite_params().
VARIANTS = {
    "b0": Variant(1.0, 1.0, 224, 0.2),
    "b1": Variant(1.0, 1.1, 240, 0.2),
    "b2": Variant(1.1, 1.2, 260, 0.3),
    "b3": Variant(1.2, 1.4, 300, 0.3),
    "b4": Variant(1.4, 1.8, 380, 0.4),
    "b5": Variant(1.6, 2.2, 456, 0.4),
    "b6": Variant(1.8, 2.6, 528, 0.5),
    "b7": Variant(2.0, 3.1, 600, 0.5),
    "b8": Variant(2.2, 3.6, 672, 0.5),
    "l2": Variant(4.3, 5.3, 800, 0.5),
    "lite0": Variant(1.0, 1.0, 224, 0.2, lite=True),
    "lite1": Variant(1.0, 1.1, 240, 0.2, lite=True),
    "lite2": Variant(1.1, 1.2, 260, 0.3, lite=True),
    "lite3": Variant(1.2, 1.4, 280, 0.3, lite=True),
    "lite4": Variant(1.4, 1.8, 300, 0.3, lite=True),
    # Not a published model: B0's stages with one block each at quarter width (130k
    # parameters), for tests and smoke runs where B0's build and trace time dominates.
    "tiny": Variant(0.25, 0.1, 64, 0.1),
}


@dataclasses.dataclass(frozen=True)
class Block:
    """One MBConv block of a scaled variant."""

    name: str  # layer-name prefix, e.g. "block2a_"
    stage: int  # index into B0_STAGES
    index: int  # position within its stage
    position: int  # position among all blocks, for the stochastic-depth schedule
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int
    se_filters: int  # 0: no squeeze-excitation

    @property
    def filters_expanded(self) -> int:
        return self.filters_in * self.expand

    @property
    def has_skip(self) -> bool:
        return self.stride == 1 and self.filters_in == self.filters_out


@dataclasses.dataclass(frozen=True)
class Architecture:
    """Everything needed to build, or to map a checkpoint onto, one variant."""

    variant: str
    stem_filters: int
    blocks: tuple[Block, ...]
    head_filters: int
    activation: str
    resolution: int
    dropout: float


def round_filters(filters: int, width: float, divisor: int = FILTER_DIVISOR) -> int:
    """Scales a filter count by ``width``, rounded to a multiple of ``divisor``.

    Rounding never goes down by more than 10 % (tensorflow/tpu efficientnet_model.py).
    """
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
    return int(math.ceil(depth * repeats))


def variant_names() -> tuple[str, ...]:
    return tuple(VARIANTS)


def _variant(name: str) -> Variant:
    key = name.lower().removeprefix("efficientnet-").removeprefix("efficientnet")
    if key not in VARIANTS:
        raise EffdrError(
            f"unknown EfficientNet variant {name!r}: choose one of {', '.join(VARIANTS)}"
        )
    return VARIANTS[key]


def canonical_variant(name: str) -> str:
    """``"EfficientNet-B5"``, ``"efficientnetb5"`` and ``"b5"`` all name ``"b5"``."""
    _variant(name)
    return name.lower().removeprefix("efficientnet-").removeprefix("efficientnet")


def architecture(variant: str) -> Architecture:
    """Expands the B0 table by the variant's scaling coefficients."""
    name = canonical_variant(variant)
    spec = VARIANTS[name]
    stem = B0_STEM_FILTERS if spec.lite else round_filters(B0_STEM_FILTERS, spec.width)
    head = B0_HEAD_FILTERS if spec.lite else round_filters(B0_HEAD_FILTERS, spec.width)
    blocks = []
    filters_in = stem
    last_stage = len(B0_STAGES) - 1
    for s, stage in enumerate(B0_STAGES):
        fixed = spec.lite and s in (0, last_stage)
        repeats = stage.repeats if fixed else round_repeats(stage.repeats, spec.depth)
        filters_out = round_filters(stage.filters_out, spec.width)
        for j in range(repeats):
            blocks.append(
                Block(
                    name=f"block{s + 1}{chr(ord('a') + j)}_",
                    stage=s,
                    index=j,
                    position=len(blocks),
                    kernel=stage.kernel,
                    stride=stage.stride if j == 0 else 1,
                    expand=stage.expand,
                    filters_in=filters_in,
                    filters_out=filters_out,
                    se_filters=0 if spec.lite else max(1, int(filters_in * SE_RATIO)),
                )
            )
            filters_in = filters_out
    return Architecture(
        variant=name,
        stem_filters=stem,
        blocks=tuple(blocks),
        head_filters=head,
        activation="relu6" if spec.lite else "swish",
        resolution=spec.resolution,
        dropout=spec.dropout,
    )


# Initialisers of the reference (tensorflow/tpu efficientnet_model.py), as in keras.applications.
CONV_KERNEL_INITIALIZER = {
    "class_name": "VarianceScaling",
    "config": {"scale": 2.0, "mode": "fan_out", "distribution": "truncated_normal"},
}
DENSE_KERNEL_INITIALIZER = {
    "class_name": "VarianceScaling",
    "config": {"scale": 1.0 / 3.0, "mode": "fan_out", "distribution": "uniform"},
}


def normalization_layer(normalization) -> layers.Layer | None:
    """An in-model ``Rescaling`` that maps pixels in [0, 255] to the normalised input.

    Args:
        normalization: a name from ``constants.NORMALIZATION_PRESETS``, ``"none"``, or a
            mapping with ``mean`` and ``std`` per channel on [0, 1] pixels.
    """
    mean, std = normalization_stats(normalization)
    if mean is None:
        return None
    scale = [1.0 / (255.0 * s) for s in std]
    offset = [-m / s for m, s in zip(mean, std, strict=True)]
    return layers.Rescaling(scale=scale, offset=offset, name="input_normalization")


def normalization_stats(normalization) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """(mean, std) on [0, 1] pixels for a preset name or mapping; (None, None) for "none"."""
    if isinstance(normalization, str):
        if normalization == constants.NO_NORMALIZATION:
            return None, None
        if normalization not in constants.NORMALIZATION_PRESETS:
            choices = ", ".join([*constants.NORMALIZATION_PRESETS, constants.NO_NORMALIZATION])
            raise EffdrError(f"unknown normalization {normalization!r}: choose one of {choices}")
        mean, std = constants.NORMALIZATION_PRESETS[normalization]
        return tuple(mean), tuple(std)
    try:
        mean = tuple(float(m) for m in normalization["mean"])
        std = tuple(float(s) for s in normalization["std"])
    except (KeyError, TypeError, ValueError) as e:
        raise EffdrError(
            f"normalization {normalization!r}: expected a preset name or {{'mean': [...], "
            "'std': [...]}"
        ) from e
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise EffdrError(f"normalization {normalization!r}: need 3 means and 3 positive stds")
    return mean, std


def _batch_norm(name: str, momentum: float, epsilon: float, synchronized: bool) -> layers.Layer:
    return layers.BatchNormalization(
        axis=-1, momentum=momentum, epsilon=epsilon, synchronized=synchronized, name=name
    )


def _mbconv(x, block: Block, *, activation: str, drop_rate: float, bn) -> keras.KerasTensor:
    """Mobile inverted bottleneck: expand 1x1, depthwise kxk, squeeze-excite, project 1x1."""
    p = block.name
    shortcut = x
    if block.expand != 1:
        x = layers.Conv2D(
            block.filters_expanded,
            1,
            padding="same",
            use_bias=False,
            kernel_initializer=CONV_KERNEL_INITIALIZER,
            name=f"{p}expand_conv",
        )(x)
        x = bn(f"{p}expand_bn")(x)
        x = layers.Activation(activation, name=f"{p}expand_activation")(x)
    # padding="same" is TensorFlow's SAME (extra pixel after), which the reference and all
    # TF-ported PyTorch checkpoints were trained with; keras.applications spells it as an
    # explicit ZeroPadding2D + "valid".
    x = layers.DepthwiseConv2D(
        block.kernel,
        strides=block.stride,
        padding="same",
        use_bias=False,
        depthwise_initializer=CONV_KERNEL_INITIALIZER,
        name=f"{p}dwconv",
    )(x)
    x = bn(f"{p}bn")(x)
    x = layers.Activation(activation, name=f"{p}activation")(x)
    if block.se_filters:
        filters = x.shape[-1]
        se = layers.GlobalAveragePooling2D(keepdims=True, name=f"{p}se_squeeze")(x)
        se = layers.Conv2D(
            block.se_filters,
            1,
            activation=activation,
            kernel_initializer=CONV_KERNEL_INITIALIZER,
            name=f"{p}se_reduce",
        )(se)
        se = layers.Conv2D(
            filters,
            1,
            activation="sigmoid",
            kernel_initializer=CONV_KERNEL_INITIALIZER,
            name=f"{p}se_expand",
        )(se)
        x = layers.Multiply(name=f"{p}se_excite")([x, se])
    x = layers.Conv2D(
        block.filters_out,
        1,
        padding="same",
        use_bias=False,
        kernel_initializer=CONV_KERNEL_INITIALIZER,
        name=f"{p}project_conv",
    )(x)
    x = bn(f"{p}project_bn")(x)
    if block.has_skip:
        if drop_rate > 0:
            # Stochastic depth: drop the whole residual branch per sample.
            x = layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=f"{p}drop")(x)
        x = layers.Add(name=f"{p}add")([x, shortcut])
    return x


def _check_input_shape(variant: str, input_shape, resolution: int) -> tuple:
    if input_shape is None:
        return (resolution, resolution, 3)
    shape = tuple(input_shape)
    if len(shape) != 3 or shape[-1] != 3:
        raise EffdrError(f"input_shape {input_shape!r}: expected (height, width, 3)")
    for side in shape[:2]:
        if side is not None and side < 32:
            raise EffdrError(
                f"input_shape {input_shape!r}: {variant} needs at least 32 pixels per side "
                "(it downsamples by 32)"
            )
    return shape


def build_efficientnet(
    variant: str = "b0",
    num_classes: int = 5,
    input_shape: Sequence[int | None] | None = None,
    include_top: bool = True,
    pooling: str | None = None,
    normalization="imagenet",
    *,
    dropout_rate: float | None = None,
    drop_connect_rate: float = 0.2,
    bn_momentum: float = 0.99,
    bn_epsilon: float = 1e-3,
    bn_synchronized: bool = False,
    classifier_activation: str | None = None,
    classifier_initializer=None,
    name: str | None = None,
) -> keras.Model:
    """Builds an EfficientNet with freshly initialised weights.

    Args:
        variant: ``b0``..``b8``, ``l2`` or ``lite0``..``lite4``.
        num_classes: outputs of the classification head (with ``include_top``).
        input_shape: ``(height, width, 3)``; ``None`` takes the variant's resolution. Sides
            may be ``None`` (any size) or at least 32.
        include_top: add global pooling, dropout and the dense classifier ``predictions``.
        pooling: without the top, ``None`` (the 4-D feature map), ``"avg"`` or ``"max"``.
        normalization: in-model input normalisation, see ``normalization_layer``. With any
            preset other than ``"none"`` the model takes pixels in [0, 255].
        dropout_rate: before the classifier; ``None`` takes the variant's.
        drop_connect_rate: stochastic-depth rate of the last block; it rises linearly from 0.
        bn_momentum: batch-norm moving-average momentum (Keras convention; 0.99 = TF reference).
        bn_epsilon: batch-norm epsilon (1e-3 in the reference).
        bn_synchronized: batch statistics over all replicas (cross-replica batch norm, as the
            reference's TPU training); only matters under a multi-replica strategy.
        classifier_activation: ``None`` returns logits; ``"softmax"`` probabilities.
        classifier_initializer: the classifier's kernel initialiser; ``None`` takes the
            reference's (variance scaling 1/3 over fan-out).
        name: model name; defaults to ``efficientnet-<variant>``.

    Returns:
        A functional ``keras.Model``.
    """
    arch = architecture(variant)
    shape = _check_input_shape(arch.variant, input_shape, arch.resolution)
    if pooling not in (None, "avg", "max"):
        raise EffdrError(f"pooling {pooling!r}: choose None, 'avg' or 'max'")
    dropout_rate = arch.dropout if dropout_rate is None else dropout_rate

    def bn(layer_name):
        return _batch_norm(layer_name, bn_momentum, bn_epsilon, bn_synchronized)

    inputs = keras.Input(shape=shape, name="image")
    x = inputs
    norm = normalization_layer(normalization)
    if norm is not None:
        x = norm(x)
    x = layers.Conv2D(
        arch.stem_filters,
        3,
        strides=2,
        padding="same",
        use_bias=False,
        kernel_initializer=CONV_KERNEL_INITIALIZER,
        name="stem_conv",
    )(x)
    x = bn("stem_bn")(x)
    x = layers.Activation(arch.activation, name="stem_activation")(x)
    n_blocks = len(arch.blocks)
    for block in arch.blocks:
        x = _mbconv(
            x,
            block,
            activation=arch.activation,
            drop_rate=drop_connect_rate * block.position / n_blocks,
            bn=bn,
        )
    x = layers.Conv2D(
        arch.head_filters,
        1,
        padding="same",
        use_bias=False,
        kernel_initializer=CONV_KERNEL_INITIALIZER,
        name="top_conv",
    )(x)
    x = bn("top_bn")(x)
    x = layers.Activation(arch.activation, name="top_activation")(x)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if dropout_rate > 0:
            x = layers.Dropout(dropout_rate, name="top_dropout")(x)
        # float32 head: logits stay exact under mixed precision.
        x = layers.Dense(
            num_classes,
            activation=classifier_activation,
            kernel_initializer=classifier_initializer or DENSE_KERNEL_INITIALIZER,
            dtype="float32",
            name="predictions",
        )(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)
    return keras.Model(inputs, x, name=name or f"efficientnet-{arch.variant}")
