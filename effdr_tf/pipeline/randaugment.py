"""RandAugment in-graph, per image, with one resampling of the image per example.

The 16 operations of the reference (tensorflow/tpu autoaugment.py) plus Identity, with the
reference's magnitude mapping (``level_to_arg`` there). Each image draws its own ``num_layers``
operations (with per-op weights) and magnitudes from a stateless seed, so results are
reproducible and do not depend on the batch or on parallel scheduling.

Speed comes from merging resamplings: the resize of the crop window, the flip and every
geometric op an image draws (Rotate, ShearX/Y, TranslateX/Y) are affine maps, applied together
in one resampling by the cheapest route the draw allows (a plain resize, a shifted
crop-and-resize for translations, a projective warp only for rotation or shear). The photometric
operations then run in the drawn order, each through ``tf.switch_case`` so only the chosen op
executes, written with the TensorFlow kernels that are fast on CPU. Photometric results equal
PIL's (ImageOps / ImageEnhance) exactly on test photographs. Differences from applying the ops
one by one, documented:

* Geometric ops are applied before the photometric ones they were drawn after. Point-wise ops
  commute with warps; only the grey fill of rotated/sheared/translated corners differs (a later
  colour op sees it as 128-grey image content, as it does in the reference when the colour op
  comes second) and histogram ops (AutoContrast, Equalize) see the fill in either order.
* Resampling is bilinear once, instead of nearest-neighbour per op as in the reference.

Magnitude ``M`` is a float; the reference scale is 0..10. Above 10 (the B5/B7 recipes use 17 and
28) geometric and enhancement ops keep growing linearly as in the reference; parameters that
leave their valid range are clipped to it: Posterize keeps at most 8 bits and Solarize's threshold
stops at 256 (both become no-ops, as the reference's posterize/solarize weaken with M), the
enhancement factor stays >= 0, SolarizeAdd adds at most 255. Per-draw magnitudes are
``M + magnitude_std * N(0, 1)`` clipped to ``[0, max_magnitude]``.

No XLA kernel exists for ``ImageProjectiveTransformV3`` in TF 2.21: run this in tf.data (or in
a Keras preprocessing layer outside a jit-compiled model), never inside the compiled model.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

OPS = (
    "Identity",
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Cutout",
    "SolarizeAdd",
)
GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")
MAX_LEVEL = 10.0
# tensorflow/tpu randaugment: translate 100 px and cutout half-size 4*M px, defined for the
# EfficientNet-B0 resolution (224 px); here they scale with the image side.
TRANSLATE_FRACTION_AT_MAX = 100.0 / 224.0
CUTOUT_HALF_FRACTION_PER_LEVEL = 4.0 / 224.0
FILL_VALUE = 128

# Per-op selection weights. "reference": the 16 ops, uniform (tensorflow/tpu). "uniform": the 16
# ops and Identity (Model Garden's implicit identity, 1/17). "thesis": geometric ops favoured
# over colour ones, as the thesis describes; it publishes no numbers, 3:1 is our choice.
WEIGHT_PRESETS = {
    "reference": {op: 0.0 if op == "Identity" else 1.0 for op in OPS},
    "uniform": dict.fromkeys(OPS, 1.0),
    "thesis": {op: 3.0 if op in GEOMETRIC else 1.0 for op in OPS},
}


def op_weights(weights) -> list[float]:
    """Normalised selection probabilities in ``OPS`` order from a preset name or mapping."""
    if isinstance(weights, str):
        if weights not in WEIGHT_PRESETS:
            raise ValueError(
                f"unknown RandAugment weights {weights!r}: {', '.join(WEIGHT_PRESETS)}"
            )
        weights = WEIGHT_PRESETS[weights]
    unknown = set(weights) - set(OPS)
    if unknown:
        raise ValueError(f"unknown RandAugment ops {sorted(unknown)}; known: {', '.join(OPS)}")
    values = [float(weights.get(op, 0.0)) for op in OPS]
    total = sum(values)
    if total <= 0 or min(values) < 0:
        raise ValueError("RandAugment weights must be >= 0 with a positive sum")
    return [v / total for v in values]


# --------------------------------------------------------------------------------------------
# Affine maps. Matrices map output pixel coordinates to input pixel coordinates (pixel centres
# at integers), as ImageProjectiveTransformV3 expects.


def _matrix(a, b, c, d, e, f):
    a, b, c, d, e, f = (tf.cast(v, tf.float32) for v in (a, b, c, d, e, f))
    zero, one = tf.zeros([], tf.float32), tf.ones([], tf.float32)
    return tf.stack([tf.stack([a, b, c]), tf.stack([d, e, f]), tf.stack([zero, zero, one])])


def _from_continuous(m):
    """PIL-style matrices use coordinates with pixel centres at +0.5; convert to centres at 0."""
    shift = _matrix(1, 0, 0.5, 0, 1, 0.5)
    unshift = _matrix(1, 0, -0.5, 0, 1, -0.5)
    return unshift @ m @ shift


def rotate_matrix(degrees, height, width):
    """Counter-clockwise rotation about the image centre (PIL ``Image.rotate``)."""
    theta = -degrees * math.pi / 180.0
    cos, sin = tf.cos(theta), tf.sin(theta)
    cx, cy = tf.cast(width, tf.float32) / 2.0, tf.cast(height, tf.float32) / 2.0
    m = _matrix(cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy)
    return _from_continuous(m)


def shear_x_matrix(level):
    return _from_continuous(_matrix(1, level, 0, 0, 1, 0))


def shear_y_matrix(level):
    return _from_continuous(_matrix(1, 0, 0, level, 1, 0))


def translate_matrix(dx, dy):
    """Content moves by (-dx, -dy): output (x, y) reads input (x + dx, y + dy), as PIL."""
    return _matrix(1, 0, dx, 0, 1, dy)


def crop_resize_matrix(offset_y, offset_x, crop_h, crop_w, out_size, flip):
    """Output pixels (``out_size`` = (height, width)) to the crop window, corners aligned,
    optionally mirrored left-right."""
    out_h = tf.cast(out_size[0] - 1, tf.float32)
    out_w = tf.cast(out_size[1] - 1, tf.float32)
    sx = tf.cast(crop_w - 1, tf.float32) / tf.maximum(out_w, 1.0)
    sy = tf.cast(crop_h - 1, tf.float32) / tf.maximum(out_h, 1.0)
    ox, oy = tf.cast(offset_x, tf.float32), tf.cast(offset_y, tf.float32)
    m = _matrix(sx, 0, ox, 0, sy, oy)
    flip_m = _matrix(-1, 0, out_w, 0, 1, 0)
    return tf.cond(tf.convert_to_tensor(flip), lambda: m @ flip_m, lambda: m)


def warp(image, matrix, out_h, out_w, fill_value=FILL_VALUE):
    """One bilinear resampling of a uint8/float HWC image through ``matrix``; float32 out."""
    image = tf.cast(image, tf.float32)
    m = matrix / matrix[2, 2]
    transform = tf.reshape(m, [-1])[:8][tf.newaxis]
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[tf.newaxis],
        transforms=transform,
        output_shape=tf.stack([out_h, out_w]),
        fill_value=tf.cast(fill_value, tf.float32),
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
    return out[0]


def quantize(image):
    """Float pixels to the integer grid of uint8 (as float32): round and clip."""
    return tf.clip_by_value(tf.round(image), 0.0, 255.0)


def to_uint8(image):
    return tf.cast(quantize(image), tf.uint8)


# --------------------------------------------------------------------------------------------
# Photometric operations with PIL semantics, on float32 images holding integer values 0..255.
# Written as plain arithmetic with scalar parameters where possible: in TensorFlow's CPU kernels,
# tf.where, gathers and broadcasts over the channel axis cost several times a scalar op; per-
# channel work is done on rows of W x 3 values, and luma with a 1x1 convolution.

# PIL's RGB -> L weights in 16-bit fixed point, as a 1x1 convolution writing luma to all three
# channels (a convolution avoids TensorFlow's slow broadcasting over the channel axis).
# NumPy, not a tensor: an eager tensor at import would start the TF context before a
# MultiWorkerMirroredStrategy can configure collective ops.
_LUMA3 = np.tile(np.array([19595.0, 38470.0, 7471.0], np.float32)[:, None], [1, 3])[None, None]


def _truncate(values):
    """PIL's blend result: clipped to 0..255 and truncated."""
    return tf.floor(tf.clip_by_value(values, 0.0, 255.0))


def _channelwise(image, scale, offset):
    """image * scale + offset per channel. Viewed as rows of W x 3 values, the per-channel
    vectors tile along the contiguous axis, which TensorFlow broadcasts fast."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    rows = tf.reshape(image, [h, w * 3])
    return tf.reshape(rows * tf.tile(scale, [w]) + tf.tile(offset, [w]), tf.shape(image))


def _channel_extremes(image):
    """Per-channel (min, max): rows first (contiguous), then the W x 3 remainder."""
    w = tf.shape(image)[1]
    rows = tf.reshape(image, [tf.shape(image)[0], w * 3])
    lo = tf.reduce_min(tf.reshape(tf.reduce_min(rows, axis=0), [w, 3]), axis=0)
    hi = tf.reduce_max(tf.reshape(tf.reduce_max(rows, axis=0), [w, 3]), axis=0)
    return lo, hi


def grayscale3(image):
    """PIL's luma in each of three channels; exact (integer sums stay below 2**24)."""
    weighted = tf.nn.conv2d(image[tf.newaxis], _LUMA3, 1, "VALID")[0]
    return tf.floor((weighted + 32768.0) / 65536.0)


def invert(image):
    return 255.0 - image


def posterize(image, bits):
    step = tf.cast(tf.bitwise.left_shift(1, 8 - bits), tf.float32)
    return tf.floor(image / step) * step


def solarize(image, threshold):
    above = tf.cast(image >= tf.cast(threshold, tf.float32), tf.float32)
    return image + (255.0 - 2.0 * image) * above


def solarize_add(image, addition, threshold=128.0):
    added = tf.minimum(image + tf.cast(addition, tf.float32), 255.0)
    return image + (added - image) * tf.cast(image < threshold, tf.float32)


def brightness(image, factor):
    return _truncate(factor * image)


def contrast(image, factor):
    mean = tf.floor(tf.reduce_mean(grayscale3(image)) + 0.5)
    return _truncate(mean + factor * (image - mean))


def color(image, factor):
    gray = grayscale3(image)
    return _truncate(gray + factor * (image - gray))


def autocontrast(image):
    lo, hi = _channel_extremes(image)
    stretch = hi > lo
    scale = tf.where(stretch, 255.0 / tf.maximum(hi - lo, 1.0), 1.0)
    offset = tf.where(stretch, -lo * scale, 0.0)  # PIL: int(x * scale + offset)
    return _truncate(_channelwise(image, scale, offset))


def equalize(image):
    """PIL ImageOps.equalize per channel: step = (N - count of the top level) // 255."""
    offsets = _channelwise(image, tf.ones([3]), tf.constant([0.0, 256.0, 512.0]))
    indices = tf.reshape(tf.cast(offsets, tf.int32), [-1])
    hist = tf.reshape(tf.math.bincount(indices, minlength=768, maxlength=768), [3, 256])
    levels = tf.range(256)[tf.newaxis]
    top = tf.reduce_max(tf.where(hist > 0, levels, 0), axis=1, keepdims=True)
    step = (tf.reduce_sum(hist, axis=1, keepdims=True) - tf.gather(hist, top, batch_dims=1)) // 255
    safe = tf.maximum(step, 1)
    table = tf.minimum((tf.cumsum(hist, axis=1, exclusive=True) + safe // 2) // safe, 255)
    table = tf.where(step > 0, table, levels)  # PIL leaves such a channel unchanged
    out = tf.gather(tf.cast(tf.reshape(table, [-1]), tf.float32), indices)
    return tf.reshape(out, tf.shape(image))


def sharpness(image, factor):
    """Blend with PIL's SMOOTH filter (3x3 ones, centre 5, / 13); the 1-px border is kept."""
    rows = image[:-2] + image[1:-1] + image[2:]
    box = rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]
    inner = image[1:-1, 1:-1]
    smooth = tf.round((box + 4.0 * inner) / 13.0)
    degenerate = image + tf.pad(smooth - inner, [[1, 1], [1, 1], [0, 0]])
    return _truncate(degenerate + factor * (image - degenerate))


def cutout(image, half_size, seed, fill_value=FILL_VALUE):
    """A square of side 2 * half_size, centred uniformly at random, filled with grey."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    centre = tf.random.stateless_uniform([2], seed, 0, 1)
    cy = tf.cast(centre[0] * tf.cast(h, tf.float32), tf.int32)
    cx = tf.cast(centre[1] * tf.cast(w, tf.float32), tf.int32)
    half = tf.cast(half_size, tf.int32)
    y0, y1 = tf.clip_by_value(cy - half, 0, h), tf.clip_by_value(cy + half, 0, h)
    x0, x1 = tf.clip_by_value(cx - half, 0, w), tf.clip_by_value(cx + half, 0, w)
    band = image[y0:y1]
    patch = tf.fill([y1 - y0, x1 - x0, 3], tf.cast(fill_value, image.dtype))
    band = tf.concat([band[:, :x0], patch, band[:, x1:]], axis=1)
    return tf.concat([image[:y0], band, image[y1:]], axis=0)


# --------------------------------------------------------------------------------------------
# Magnitude to parameters (tensorflow/tpu autoaugment.py, ``level_to_arg``)


def enhance_factor(m):
    return tf.maximum(0.18 * m + 0.1, 0.0)


def op_parameters(m, sign, height, width):
    """All op parameters at magnitude ``m`` (float32) with ``sign`` (+1/-1) for geometric ops."""
    side = tf.cast(tf.minimum(height, width), tf.float32)
    return {
        "degrees": sign * 3.0 * m,
        "shear": sign * 0.03 * m,
        "translate_x": sign
        * (m / MAX_LEVEL)
        * TRANSLATE_FRACTION_AT_MAX
        * tf.cast(width, tf.float32),
        "translate_y": sign
        * (m / MAX_LEVEL)
        * TRANSLATE_FRACTION_AT_MAX
        * tf.cast(height, tf.float32),
        "bits": tf.clip_by_value(tf.cast(0.4 * m, tf.int32), 0, 8),
        "threshold": tf.clip_by_value(tf.cast(25.6 * m, tf.int32), 0, 256),
        "addition": tf.clip_by_value(tf.cast(11.0 * m, tf.int32), 0, 255),
        "factor": enhance_factor(m),
        "cutout_half": tf.cast(CUTOUT_HALF_FRACTION_PER_LEVEL * m * side, tf.int32),
    }


def geometric_matrix(op_index, params, height, width):
    """The op's output-to-input matrix; identity for non-geometric ops."""
    eye = tf.eye(3)
    branches = []
    for op in OPS:
        if op == "Rotate":
            branches.append(lambda: rotate_matrix(params["degrees"], height, width))
        elif op == "ShearX":
            branches.append(lambda: shear_x_matrix(params["shear"]))
        elif op == "ShearY":
            branches.append(lambda: shear_y_matrix(params["shear"]))
        elif op == "TranslateX":
            branches.append(lambda: translate_matrix(params["translate_x"], 0.0))
        elif op == "TranslateY":
            branches.append(lambda: translate_matrix(0.0, params["translate_y"]))
        else:
            branches.append(lambda: eye)
    return tf.switch_case(op_index, branches)


def photometric(image, op_index, params, seed, fill_value=FILL_VALUE):
    """Applies op ``op_index`` if it is photometric (or Cutout); geometric ops pass through."""
    f = params["factor"]
    table = {
        "AutoContrast": lambda: autocontrast(image),
        "Equalize": lambda: equalize(image),
        "Invert": lambda: invert(image),
        "Posterize": lambda: posterize(image, params["bits"]),
        "Solarize": lambda: solarize(image, params["threshold"]),
        "SolarizeAdd": lambda: solarize_add(image, params["addition"]),
        "Brightness": lambda: brightness(image, f),
        "Contrast": lambda: contrast(image, f),
        "Color": lambda: color(image, f),
        "Sharpness": lambda: sharpness(image, f),
        "Cutout": lambda: cutout(image, params["cutout_half"], seed, fill_value),
    }
    branches = [table.get(op, lambda: image) for op in OPS]
    return tf.switch_case(op_index, branches)


# --------------------------------------------------------------------------------------------
# Drawing and applying


class RandAugment:
    """Per-image RandAugment with the crop, flip and geometric ops merged into one warp.

    Args:
        num_layers: operations per image (N).
        magnitude: M, a float on the reference 0..10 scale (may exceed 10, see module doc).
        magnitude_std: standard deviation of the per-draw magnitude noise (0: fixed M).
        weights: per-op selection weights, a preset name or {op: weight}.
        max_magnitude: per-draw magnitudes are clipped to [0, max_magnitude].
        fill_value: grey level of areas a geometric op or Cutout uncovers.
    """

    def __init__(
        self,
        num_layers: int = 2,
        magnitude: float = 10.0,
        magnitude_std: float = 0.0,
        weights="reference",
        max_magnitude: float = 30.0,
        fill_value: int = FILL_VALUE,
    ):
        self.num_layers = int(num_layers)
        self.magnitude = float(magnitude)
        self.magnitude_std = float(magnitude_std)
        self.probabilities = op_weights(weights)
        self.max_magnitude = float(max_magnitude)
        self.fill_value = fill_value
        self._log_probabilities = tf.math.log(tf.constant([self.probabilities], tf.float32))

    def draw(self, seed):
        """(op indices [N], magnitudes [N], signs [N]) for one image from a [2] seed."""
        seeds = tf.random.experimental.stateless_split(seed, 3)
        ops = tf.random.stateless_categorical(self._log_probabilities, self.num_layers, seeds[0])[0]
        noise = tf.random.stateless_normal([self.num_layers], seeds[1])
        magnitudes = tf.clip_by_value(
            self.magnitude + self.magnitude_std * noise, 0.0, self.max_magnitude
        )
        signs = tf.where(tf.random.stateless_uniform([self.num_layers], seeds[2]) < 0.5, -1.0, 1.0)
        return tf.cast(ops, tf.int32), magnitudes, signs

    def __call__(self, image, seed, flip=False, out_size=None):
        """Augments one image: resize (and flip), geometric ops, photometric ops.

        The resize, flip and geometric ops are one resampling, by the cheapest route the draw
        allows: ``ResizeBilinear`` when no geometric op was drawn, ``CropAndResize`` with a
        shifted box when only translations were, and ``ImageProjectiveTransformV3`` when a
        rotation or shear was (about 20x the cost of a resize on CPU). All three sample with
        corners aligned, so they agree where they overlap.

        Args:
            image: HWC uint8 or float in [0, 255]: the (crop window of the) source image.
            seed: int32/int64 [2] stateless seed.
            flip: bool scalar: mirror left-right.
            out_size: (height, width) of the result; the source size when None.

        Returns:
            HWC float32 augmented image with integer values in [0, 255].
        """
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2)
        ops, magnitudes, signs = self.draw(seeds[0])
        op_seeds = tf.random.experimental.stateless_split(seeds[1], self.num_layers)
        in_h, in_w = tf.shape(image)[0], tf.shape(image)[1]
        out_h, out_w = (in_h, in_w) if out_size is None else out_size
        flip = tf.convert_to_tensor(flip)
        params = [
            op_parameters(magnitudes[k], signs[k], out_h, out_w) for k in range(self.num_layers)
        ]

        def warped():
            matrix = crop_resize_matrix(0, 0, in_h, in_w, (out_h, out_w), flip)
            for k in range(self.num_layers):
                matrix = matrix @ geometric_matrix(ops[k], params[k], out_h, out_w)
            return warp(image, matrix, out_h, out_w, self.fill_value)

        def translated():
            dx = tf.add_n(
                [
                    tf.where(
                        tf.equal(ops[k], OPS.index("TranslateX")), params[k]["translate_x"], 0.0
                    )
                    for k in range(self.num_layers)
                ]
            )
            dy = tf.add_n(
                [
                    tf.where(
                        tf.equal(ops[k], OPS.index("TranslateY")), params[k]["translate_y"], 0.0
                    )
                    for k in range(self.num_layers)
                ]
            )
            return shifted_resize(image, (out_h, out_w), flip, dx, dy, self.fill_value)

        def resized():
            return shifted_resize(image, (out_h, out_w), flip, 0.0, 0.0, self.fill_value)

        kinds = tf.constant(
            [
                2 if op in ("Rotate", "ShearX", "ShearY") else 1 if op in GEOMETRIC else 0
                for op in OPS
            ]
        )
        out = tf.switch_case(tf.reduce_max(tf.gather(kinds, ops)), [resized, translated, warped])
        out = quantize(out)
        for k in range(self.num_layers):
            out = photometric(out, ops[k], params[k], op_seeds[k], self.fill_value)
        return out


def shifted_resize(image, out_size, flip, dx=0.0, dy=0.0, fill_value=FILL_VALUE):
    """Resize to ``out_size`` (corners aligned), optionally mirrored, with the output shifted by
    (dx, dy) output pixels as TranslateX/Y do; uncovered areas get ``fill_value``."""
    out_h, out_w = out_size
    image = tf.cast(image, tf.float32)

    def plain():
        out = tf.raw_ops.ResizeBilinear(
            images=image[tf.newaxis],
            size=tf.stack([out_h, out_w]),
            align_corners=True,
            half_pixel_centers=False,
        )[0]
        return tf.cond(flip, lambda: tf.reverse(out, [1]), lambda: out)

    def shifted():
        sx = dx / tf.cast(tf.maximum(out_w - 1, 1), tf.float32)
        sy = dy / tf.cast(tf.maximum(out_h - 1, 1), tf.float32)
        x1, x2 = tf.cond(flip, lambda: (1.0 - sx, -sx), lambda: (sx, 1.0 + sx))
        box = tf.stack([sy, x1, 1.0 + sy, x2])[tf.newaxis]
        return tf.image.crop_and_resize(
            image[tf.newaxis],
            box,
            [0],
            tf.stack([out_h, out_w]),
            extrapolation_value=float(fill_value),
        )[0]

    return tf.cond(tf.logical_and(tf.equal(dx, 0.0), tf.equal(dy, 0.0)), plain, shifted)


class RandAugmentLayer(keras.layers.Layer):
    """RandAugment as a Keras preprocessing layer: a different draw for every image.

    Takes a batch of images with values in [0, 255] and returns float32 of the same shape;
    identity unless ``training``. Use it in a preprocessing model or ``dataset.map``, not inside
    a ``jit_compile=True`` model (no XLA kernel for the warp).
    """

    def __init__(
        self,
        num_layers=2,
        magnitude=10.0,
        magnitude_std=0.0,
        weights="reference",
        max_magnitude=30.0,
        fill_value=FILL_VALUE,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.settings = dict(
            num_layers=num_layers,
            magnitude=magnitude,
            magnitude_std=magnitude_std,
            weights=weights,
            max_magnitude=max_magnitude,
            fill_value=fill_value,
        )
        self.augment = RandAugment(**self.settings)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=True):
        if not training:
            return tf.cast(images, tf.float32)
        base = tf.cast(self.seed_generator.next(), tf.int64)
        seeds = tf.random.experimental.stateless_split(base, tf.shape(images)[0])
        return tf.map_fn(
            lambda args: self.augment(args[0], args[1]),
            (quantize(tf.cast(images, tf.float32)), seeds),
            fn_output_signature=tf.TensorSpec(images.shape[1:], tf.float32),
        )

    def get_config(self):
        return {**super().get_config(), **self.settings, "seed": self.seed}


def apply_op(image, op: str, magnitude: float, seed=(0, 0), sign: float = 1.0):
    """One op at one magnitude on one uint8 image, through the same code as RandAugment."""
    image = tf.convert_to_tensor(image)
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    params = op_parameters(tf.constant(magnitude, tf.float32), tf.constant(sign), h, w)
    index = tf.constant(OPS.index(op))
    if op in GEOMETRIC:
        matrix = geometric_matrix(index, params, h, w)
        return to_uint8(warp(image, matrix, h, w))
    out = photometric(tf.cast(image, tf.float32), index, params, tf.constant(seed, tf.int64))
    return tf.cast(out, tf.uint8)
