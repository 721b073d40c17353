"""RandAugment in-graph, per image, with one resampling of the image per example.

The 16 operations of the reference (tensorflow/tpu autoaugment.py) plus Identity, with the
reference's magnitude mapping (ANCHORS.md). Each image draws its own ``num_layers`` operations
(with per-op weights) and magnitudes from a stateless seed, so results are reproducible and do
not depend on the batch or on parallel scheduling.

Speed comes from merging resamplings: the crop-and-resize, the flip and every geometric op an
image draws (Rotate, ShearX/Y, TranslateX/Y) are affine maps, composed into one 3x3 matrix and
applied by a single ``ImageProjectiveTransformV3`` (bilinear). The photometric operations then
run in the drawn order on the warped image, each through ``tf.switch_case`` so only the chosen
op executes. Differences from applying the ops one by one, documented:

* Geometric ops are applied before the photometric ones they were drawn after. Point-wise ops
  commute with warps; only the grey fill of rotated/sheared/translated corners differs (here a
  later colour op sees it as 128-grey image content, as it does in the reference when the colour
  op comes second) and histogram ops (AutoContrast, Equalize) see the fill in either order.
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


def crop_resize_matrix(offset_y, offset_x, crop_h, crop_w, size, flip):
    """Output ``size`` x ``size`` pixels to the crop window, corners aligned, optional flip."""
    s = tf.cast(size - 1, tf.float32)
    sx = tf.cast(crop_w - 1, tf.float32) / tf.maximum(s, 1.0)
    sy = tf.cast(crop_h - 1, tf.float32) / tf.maximum(s, 1.0)
    ox, oy = tf.cast(offset_x, tf.float32), tf.cast(offset_y, tf.float32)
    m = _matrix(sx, 0, ox, 0, sy, oy)
    flip_m = _matrix(-1, 0, s, 0, 1, 0)
    return tf.cond(flip, lambda: m @ flip_m, lambda: m)


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


def to_uint8(image):
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


# --------------------------------------------------------------------------------------------
# Photometric operations on uint8 images (PIL semantics)


def _blend(degenerate, image, factor):
    """degenerate + factor * (image - degenerate), clipped, truncated to uint8 as PIL does."""
    d = tf.cast(degenerate, tf.float32)
    out = d + tf.cast(factor, tf.float32) * (tf.cast(image, tf.float32) - d)
    return tf.cast(tf.clip_by_value(out, 0.0, 255.0), tf.uint8)


def _grayscale(image):
    """PIL's RGB -> L: (299 R + 587 G + 114 B) / 1000 in 16-bit fixed point, rounded."""
    x = tf.cast(image, tf.int32)
    luma = (x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 0x8000) // 65536
    return tf.cast(luma, tf.uint8)


def autocontrast(image):
    x = tf.cast(image, tf.float32)
    lo = tf.reduce_min(x, axis=[0, 1])
    hi = tf.reduce_max(x, axis=[0, 1])
    scale = 255.0 / tf.maximum(hi - lo, 1.0)
    out = tf.floor((x - lo) * scale)
    out = tf.where(hi > lo, out, x)
    return tf.cast(tf.clip_by_value(out, 0.0, 255.0), tf.uint8)


def _equalize_channel(channel):
    values = tf.reshape(tf.cast(channel, tf.int32), [-1])
    hist = tf.math.bincount(values, minlength=256, maxlength=256)
    nonzero = tf.boolean_mask(hist, hist > 0)
    step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 255
    safe_step = tf.maximum(step, 1)
    lut = (tf.cumsum(hist, exclusive=True) + safe_step // 2) // safe_step
    lut = tf.clip_by_value(lut, 0, 255)
    return tf.cond(
        step > 0,
        lambda: tf.cast(tf.gather(lut, values), tf.uint8),
        lambda: tf.reshape(tf.cast(channel, tf.uint8), [-1]),
    )


def equalize(image):
    shape = tf.shape(image)
    channels = [_equalize_channel(image[..., c]) for c in range(3)]
    return tf.reshape(tf.stack(channels, axis=-1), shape)


def invert(image):
    return 255 - image


def posterize(image, bits):
    shift = 8 - tf.clip_by_value(tf.cast(bits, tf.int32), 0, 8)
    step = tf.bitwise.left_shift(1, shift)
    x = tf.cast(image, tf.int32)
    return tf.cast(x // step * step, tf.uint8)


def solarize(image, threshold):
    x = tf.cast(image, tf.int32)
    return tf.cast(tf.where(x >= tf.cast(threshold, tf.int32), 255 - x, x), tf.uint8)


def solarize_add(image, addition, threshold=128):
    x = tf.cast(image, tf.int32)
    added = tf.clip_by_value(x + tf.cast(addition, tf.int32), 0, 255)
    return tf.cast(tf.where(x < threshold, added, x), tf.uint8)


def color(image, factor):
    gray = tf.repeat(_grayscale(image)[..., tf.newaxis], 3, axis=-1)
    return _blend(gray, image, factor)


def contrast(image, factor):
    mean = tf.floor(tf.reduce_mean(tf.cast(_grayscale(image), tf.float32)) + 0.5)
    return _blend(tf.fill(tf.shape(image), mean), image, factor)


def brightness(image, factor):
    return _blend(tf.zeros_like(image), image, factor)


def sharpness(image, factor):
    """Blend with PIL's SMOOTH filter (3x3, centre 5, /13); the 1-px border is kept."""
    x = tf.cast(image, tf.float32)[tf.newaxis]
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, tf.newaxis, tf.newaxis], [1, 1, 3, 1])
    smooth = tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "VALID")[0]
    smooth = tf.pad(tf.round(smooth), [[1, 1], [1, 1], [0, 0]])
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    inner = tf.pad(tf.ones([h - 2, w - 2, 3], tf.bool), [[1, 1], [1, 1], [0, 0]])
    degenerate = tf.where(inner, smooth, x[0])
    return _blend(degenerate, image, factor)


def cutout(image, half_size, seed, fill_value=FILL_VALUE):
    """A square of side 2 * half_size, centred uniformly at random, filled with grey."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    centre = tf.random.stateless_uniform([2], seed, 0, 1)
    cy = tf.cast(centre[0] * tf.cast(h, tf.float32), tf.int32)
    cx = tf.cast(centre[1] * tf.cast(w, tf.float32), tf.int32)
    half = tf.cast(half_size, tf.int32)
    ys, xs = tf.range(h)[:, tf.newaxis], tf.range(w)[tf.newaxis, :]
    inside = (ys >= cy - half) & (ys < cy + half) & (xs >= cx - half) & (xs < cx + half)
    return tf.where(inside[..., tf.newaxis], tf.cast(fill_value, image.dtype), image)


# --------------------------------------------------------------------------------------------
# Magnitude to parameters (reference mapping, ANCHORS.md)


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
    table = {
        "AutoContrast": lambda: autocontrast(image),
        "Equalize": lambda: equalize(image),
        "Invert": lambda: invert(image),
        "Posterize": lambda: posterize(image, params["bits"]),
        "Solarize": lambda: solarize(image, params["threshold"]),
        "Color": lambda: color(image, params["factor"]),
        "Contrast": lambda: contrast(image, params["factor"]),
        "Brightness": lambda: brightness(image, params["factor"]),
        "Sharpness": lambda: sharpness(image, params["factor"]),
        "Cutout": lambda: cutout(image, params["cutout_half"], seed, fill_value),
        "SolarizeAdd": lambda: solarize_add(image, params["addition"]),
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

    def __call__(self, image, seed, base_matrix=None, out_size=None):
        """Augments one image.

        Args:
            image: HWC uint8 (or float in [0, 255]) source image.
            seed: int32/int64 [2] stateless seed.
            base_matrix: output-to-source map applied before the ops (the crop, resize and
                flip); identity when None.
            out_size: (height, width) of the result; the source size when None.

        Returns:
            HWC uint8 augmented image.
        """
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2)
        ops, magnitudes, signs = self.draw(seeds[0])
        op_seeds = tf.random.experimental.stateless_split(seeds[1], self.num_layers)
        if out_size is None:
            out_h, out_w = tf.shape(image)[0], tf.shape(image)[1]
        else:
            out_h, out_w = out_size
        matrix = tf.eye(3) if base_matrix is None else base_matrix
        params = [
            op_parameters(magnitudes[k], signs[k], out_h, out_w) for k in range(self.num_layers)
        ]
        for k in range(self.num_layers):
            matrix = matrix @ geometric_matrix(ops[k], params[k], out_h, out_w)
        if base_matrix is not None:
            out = to_uint8(warp(image, matrix, out_h, out_w, self.fill_value))
        else:
            geometric = tf.constant([op in GEOMETRIC for op in OPS])
            out = tf.cond(
                tf.reduce_any(tf.gather(geometric, ops)),
                lambda: to_uint8(warp(image, matrix, out_h, out_w, self.fill_value)),
                lambda: tf.cast(image, tf.uint8),
            )
        for k in range(self.num_layers):
            out = photometric(out, ops[k], params[k], op_seeds[k], self.fill_value)
        return out


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
        out = tf.map_fn(
            lambda args: self.augment(args[0], args[1]),
            (tf.cast(tf.clip_by_value(tf.round(images), 0, 255), tf.uint8), seeds),
            fn_output_signature=tf.TensorSpec(images.shape[1:], tf.uint8),
        )
        return tf.cast(out, tf.float32)

    def get_config(self):
        return {**super().get_config(), **self.settings, "seed": self.seed}


def apply_op(image, op: str, magnitude: float, seed=(0, 0), sign: float = 1.0):
    """One op at one magnitude on one uint8 image (tests and the reference comparison)."""
    image = tf.convert_to_tensor(image)
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    params = op_parameters(tf.constant(magnitude, tf.float32), tf.constant(sign), h, w)
    index = tf.constant(OPS.index(op))
    if op in GEOMETRIC:
        matrix = geometric_matrix(index, params, h, w)
        return to_uint8(warp(image, matrix, h, w))
    return photometric(image, index, params, tf.constant(seed, tf.int64))
