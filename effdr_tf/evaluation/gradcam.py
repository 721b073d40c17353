"""Class-activation maps of an EfficientNet, measured against maps that know nothing.

Methods (``METHODS``): Grad-CAM (Selvaraju et al. 2017, https://arxiv.org/abs/1610.02391), heat
ReLU(sum_c mean_xy(d score / d A_c) * A_c), and HiResCAM (Draelos & Carin 2020,
https://arxiv.org/abs/2011.08891), heat ReLU(sum_c d score / d A_c * A_c) element-wise, which
keeps where each gradient lies. Each is taken at the last convolutional stage (stride 32, the
head's activation) or at the stage before (stride 16, a map with four times as many cells).

Memory stays that of an ordinary forward pass whatever the variant: the model is cut at the
explained layer, the part before it runs without a gradient tape and only the part after it is
recorded, so the tape never holds the activations of the whole network.

Heat is returned in the score's own units and is never scaled to each image's maximum (a
healthy eye would glow as red as a diseased one); ``fit_scale`` fixes one scale on reference
images (validation) and ``unit`` maps every image with it.

Where lesions are known (synthetic data), ``compare`` reports each map beside two nulls on the
same images: a centred Gaussian (``centre_prior``), which wins wherever lesions are drawn near
the centre, and another image's lesions (``shuffled``), which wins wherever lesions fall in the
same places from image to image. A map is worth looking at only where it beats both.
"""

from __future__ import annotations

import html

import cv2
import keras
import numpy as np
import tensorflow as tf
from sklearn import metrics as skm

METHODS = ("gradcam", "hirescam")
STAGES = ("last", "stride16")
# The fundus disc of a cropped photograph: brighter than its black border in some channel.
DISC_LEVEL = 20


def last_feature_layer(model) -> keras.layers.Layer:
    """The last layer with a spatial (rank-4) output before pooling."""
    for layer in reversed(model.layers):
        shape = getattr(layer, "output", None)
        if shape is not None and len(layer.output.shape) == 4:
            return layer
    raise ValueError("the model has no 4-D feature map to explain")


def _tail(model, layer):
    """The part of ``model`` after ``layer`` as a model of its own, or None where the network
    reaches past the layer (a skip connection around it)."""
    try:
        return keras.Model(layer.output, model.output)
    except ValueError:
        return None


def feature_layer(model, stage: str = "last") -> keras.layers.Layer:
    """The layer whose map is explained: ``last`` (``last_feature_layer``) or ``stride16``, the
    last layer at twice the last map's side that the rest of the network hangs from alone (the
    end of the stage before the last)."""
    last = last_feature_layer(model)
    if stage == "last":
        return last
    if stage != "stride16":
        raise ValueError(f"stage {stage!r}: choose one of {', '.join(STAGES)}")
    side = last.output.shape[1]
    for layer in reversed(model.layers):
        out = getattr(layer, "output", None)
        if out is None or len(out.shape) != 4 or side is None or out.shape[1] != 2 * side:
            continue
        if _tail(model, layer) is not None:
            return layer
    raise ValueError("the model has no stride-16 feature map to explain")


_SPLITS: dict = {}
_FUNCTIONS: dict = {}


def split(model, layer) -> tuple[keras.Model, keras.Model]:
    """(the model up to ``layer``, the model after it), kept per model and layer: building
    them costs more than explaining a small batch."""
    key = (id(model), layer.name)
    if key not in _SPLITS:
        tail = _tail(model, layer)
        if tail is None:
            raise ValueError(f"{layer.name}: the network reaches past this layer")
        _SPLITS[key] = (keras.Model(model.inputs, layer.output), tail, model)
    before, after, _ = _SPLITS[key]
    return before, after


def _score(logits, classes, head: str):
    """The output being explained, one per image: the logit of ``classes``; without them, the
    evidence for referable DR (grade 2 or worse) against the lower grades, log-odds for a
    softmax head of more than two grades, the sum of the outputs for ``regression`` and
    ``ordinal`` heads (the grade, or the conditional logits of each higher grade), and the
    predicted class's logit for a two-class softmax."""
    logits = tf.cast(logits, tf.float32)
    if classes is not None:
        return tf.gather(logits, tf.convert_to_tensor(classes), batch_dims=1)
    if head != "softmax":
        return tf.reduce_sum(logits, -1)
    if logits.shape[-1] > 2:
        return tf.reduce_logsumexp(logits[:, 2:], -1) - tf.reduce_logsumexp(logits[:, :2], -1)
    return tf.gather(logits, tf.argmax(logits, -1), batch_dims=1)


def heatmaps(
    model,
    images,
    classes=None,
    head: str = "softmax",
    *,
    method: str = "gradcam",
    stage: str = "last",
) -> np.ndarray:
    """Class-activation maps for ``images`` (float32 [B, H, W, 3], the model's input).

    Args:
        model: a Keras functional model.
        images: a batch of model inputs.
        classes: explain these classes' logits; default the evidence for referable DR
            (``_score``).
        head: the model's output head (``softmax``, ``regression``, ``ordinal``).
        method: one of ``METHODS``.
        stage: one of ``STAGES``.

    Returns:
        [B, H, W] float32, zero or more, in the score's units at the explained layer's cells
        (bilinearly resized to the image); not scaled per image.
    """
    if method not in METHODS:
        raise ValueError(f"method {method!r}: choose one of {', '.join(METHODS)}")
    layer = feature_layer(model, stage)
    before, after = split(model, layer)
    key = (id(model), layer.name, method, head, classes is None)
    if key not in _FUNCTIONS:
        # Traced functions, not eager calls: an eager Keras functional call keeps every
        # intermediate output until it returns (about 5 GB for a B5 batch of 4 at 456 px),
        # where the traced graph frees each one once it is consumed.
        @tf.function(reduce_retracing=True)
        def features_of(images):
            return before(images, training=False)

        @tf.function(reduce_retracing=True)
        def cam_of(features, targets):
            with tf.GradientTape() as tape:
                tape.watch(features)
                logits = after(features, training=False)
                score = tf.reduce_sum(_score(logits, targets, head))
            grads = tf.cast(tape.gradient(score, features), tf.float32)
            if method == "gradcam":
                grads = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
            return tf.nn.relu(tf.reduce_sum(grads * tf.cast(features, tf.float32), -1))

        _FUNCTIONS[key] = (features_of, cam_of)
    features_of, cam_of = _FUNCTIONS[key]
    images = tf.convert_to_tensor(images, tf.float32)
    # Outside the tape: nothing before the explained layer is kept for the backward pass.
    features = features_of(images)
    targets = None if classes is None else tf.convert_to_tensor(classes, tf.int64)
    cam = cam_of(features, targets)
    cam = tf.image.resize(cam[..., None], images.shape[1:3], method="bilinear")[..., 0]
    return cam.numpy()


def disc(image_rgb: np.ndarray) -> np.ndarray:
    """Where the fundus is in a cropped photograph (uint8 RGB [..., H, W, 3]): bool [..., H, W]."""
    return np.asarray(image_rgb).max(axis=-1) > DISC_LEVEL


def fit_scale(maps, regions=None, quantile: float = 99.0) -> float:
    """One scale for every map of a method: the ``quantile`` of the heat inside ``regions``
    (the discs) over reference images. Fixed once, so two photographs compare by colour."""
    maps = np.asarray(maps, np.float32)
    inside = maps if regions is None else maps[np.asarray(regions, bool)]
    value = float(np.percentile(inside, quantile)) if inside.size else 0.0
    return value if value > 0 else 1.0


def unit(maps, scale: float) -> np.ndarray:
    """Heat on the fixed scale: 1 at ``scale`` and above, 0 at none."""
    return np.clip(np.asarray(maps, np.float32) / scale, 0.0, 1.0)


def _colour_bar(height: int, width: int, low: str, high: str) -> np.ndarray:
    """A vertical JET bar (BGR) from 0 at the bottom to 1 at the top, labelled at both ends."""
    ramp = np.linspace(255, 0, height, dtype=np.float32).astype(np.uint8)
    bar = cv2.applyColorMap(np.repeat(ramp[:, None], 12, axis=1), cv2.COLORMAP_JET)
    panel = np.full((height, width, 3), 255, np.uint8)
    panel[:, 4:16] = bar
    scale = max(height / 600, 0.3)
    for text, y in ((high, int(14 * scale / 0.3 * 0.6) + 4), (low, height - 4)):
        cv2.putText(panel, text, (18, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1)
    return panel


def _caption(text: str, width: int, height: int) -> np.ndarray:
    """White band(s) above the overlay with ``text`` in black, broken at commas to fit."""
    font, size = cv2.FONT_HERSHEY_SIMPLEX, max(height / 900, 0.3)
    line_height = int(cv2.getTextSize("Ag", font, size, 1)[0][1] * 1.9) + 2
    lines, current = [], ""
    for part in text.split(", "):
        candidate = f"{current}, {part}" if current else part
        if current and cv2.getTextSize(candidate, font, size, 1)[0][0] > width - 8:
            lines.append(current + ",")
            candidate = part
        current = candidate
    lines.append(current)
    band = np.full((line_height * len(lines) + 4, width, 3), 255, np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(band, line, (4, line_height * (i + 1) - 4), font, size, (0, 0, 0), 1,
                    cv2.LINE_AA)  # fmt: skip
    return band


def overlay_png(
    image_rgb: np.ndarray,
    heat: np.ndarray,
    alpha: float = 0.6,
    *,
    caption: str = "",
    scale_label: str = "1",
) -> bytes:
    """The photograph with ``heat`` (on the fixed scale, [0, 1], any size: resized to the
    photograph) blended over it in JET colours as PNG bytes, with a colour bar and a caption.

    The blend is as strong as the heat (no heat leaves the photograph as it is, so a healthy
    eye stays uncoloured) and stays inside the fundus disc, never on the black border.
    """
    image = np.clip(image_rgb, 0, 255).astype(np.uint8)
    height, width = image.shape[:2]
    heat = np.clip(np.asarray(heat, np.float32), 0.0, 1.0)
    if heat.shape != (height, width):
        heat = cv2.resize(heat, (width, height), interpolation=cv2.INTER_LINEAR)
    heat = heat * disc(image)
    colours = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)  # BGR
    weight = (alpha * heat)[..., None]
    photo = cv2.cvtColor(image, cv2.COLOR_RGB2BGR).astype(np.float32)
    blended = (photo * (1 - weight) + colours.astype(np.float32) * weight).astype(np.uint8)
    canvas = np.concatenate(
        [blended, _colour_bar(height, max(64, width // 5), "0", scale_label)], axis=1
    )
    if caption:
        canvas = np.concatenate([_caption(caption, canvas.shape[1], height), canvas], axis=0)
    ok, data = cv2.imencode(".png", canvas)
    if not ok:
        raise ValueError("cannot encode the overlay")
    return data.tobytes()


def lesion_focus(heat, lesions, region=None, inside: float = 0.5, outside: float = 0.02) -> dict:
    """How much of the heat lies on known lesions (synthetic data, where they are drawn).

    Args:
        heat: [B, H, W] maps on one fixed scale (not one per image).
        lesions: [B, H, W] lesion opacity in [0, 1]; pixels above ``inside`` count as lesion,
            below ``outside`` as background (the soft edges in between count as neither).
        region: optional [B, H, W] bool, where background may lie (e.g. the fundus disc, so the
            black corners, which no model looks at, do not flatter the comparison).

    Returns:
        {"inside": mean over images of the mean heat on lesions, "outside": the same on the
        background, "more_inside": the share of images with more heat on their lesions than
        on their background, "auc": the mean over images of the area under the ROC curve of
        the heat telling lesion pixels from background pixels (0.5: no better than chance,
        whatever the scale), "per_image_auc": that area per image, "images": how many images
        had both}.
    """
    heat, lesions = np.asarray(heat, np.float32), np.asarray(lesions, np.float32)
    region = np.ones(heat.shape, bool) if region is None else np.asarray(region, bool)
    on, off, auc = [], [], []
    for h, lesion, keep in zip(heat, lesions, region, strict=True):
        inner, outer = lesion > inside, (lesion < outside) & keep
        if inner.any() and outer.any():
            on.append(float(h[inner].mean()))
            off.append(float(h[outer].mean()))
            truth = np.concatenate([np.ones(inner.sum()), np.zeros(outer.sum())])
            auc.append(float(skm.roc_auc_score(truth, np.concatenate([h[inner], h[outer]]))))
    if not on:
        return {"inside": None, "outside": None, "more_inside": None, "auc": None,
                "per_image_auc": [], "images": 0}  # fmt: skip
    return {
        "inside": float(np.mean(on)),
        "outside": float(np.mean(off)),
        "more_inside": float(np.mean(np.greater(on, off))),
        "auc": float(np.mean(auc)),
        "per_image_auc": auc,
        "images": len(on),
    }


def centre_prior(shape, sigma: float = 0.25) -> np.ndarray:
    """The first null: a fixed Gaussian at the image centre ([B, H, W], its width ``sigma`` of
    the side), the same for every image; it knows nothing of the photograph."""
    b, h, w = shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((y - (h - 1) / 2) / h) ** 2 + ((x - (w - 1) / 2) / w) ** 2
    return np.broadcast_to(np.exp(-r2 / (2 * sigma**2)), (b, h, w)).astype(np.float32)


def shuffled(lesions) -> np.ndarray:
    """The second null: each image paired with the lesions of the next one (the last with the
    first), so every map is another photograph's lesions."""
    return np.roll(np.asarray(lesions, np.float32), 1, axis=0)


NULLS = ("centre prior", "another image's lesions")


def compare(maps: dict, lesions, regions) -> list[dict]:
    """Every map in ``maps`` (name -> [B, H, W]) and the two nulls, measured on the same images.

    Returns:
        One row per map, then the nulls: ``lesion_focus``'s figures (without the per-image
        list) and ``beats_centre`` / ``beats_shuffled``, the share of images whose AUC is above
        that null's on the same image, and ``lead``, the mean AUC above the better null's (a
        map that does not beat both nulls has a lead of zero or less).
    """
    lesions = np.asarray(lesions, np.float32)
    nulls = {
        NULLS[0]: lesion_focus(centre_prior(lesions.shape), lesions, regions),
        NULLS[1]: lesion_focus(shuffled(lesions), lesions, regions),
    }
    # Each map on its own fixed scale (its 99th percentile over these images), so the mean heat
    # on and off the lesions reads on the nulls' 0-1 scale; the AUCs do not depend on it.
    measured = [
        (name, lesion_focus(np.asarray(m, np.float32) / fit_scale(m, regions), lesions, regions))
        for name, m in maps.items()
    ]
    rows = []
    for name, figures in measured + list(nulls.items()):
        row = {k: v for k, v in figures.items() if k != "per_image_auc"} | {"map": name}
        own = np.asarray(figures["per_image_auc"])
        if name not in NULLS and own.size:
            centre = np.asarray(nulls[NULLS[0]]["per_image_auc"])
            other = np.asarray(nulls[NULLS[1]]["per_image_auc"])
            row["beats_centre"] = float(np.mean(own > centre))
            row["beats_shuffled"] = float(np.mean(own > other))
            row["lead"] = float(figures["auc"] - max(centre.mean(), other.mean()))
        rows.append(row)
    return rows


def verdict(rows: list[dict]) -> str:
    """One honest sentence on the table of ``compare``: which maps beat both nulls."""
    winners = [r for r in rows if (r.get("lead") or 0) > 0]
    if not winners:
        return (
            "No map beats both nulls: none says more about where the lesions are than a "
            "centred blob or another photograph's lesions."
        )
    best = max(winners, key=lambda r: r["lead"])
    return (
        f"{', '.join(r['map'] for r in winners)} beat{'s' if len(winners) == 1 else ''} both "
        f"nulls; {best['map']} by the most (pixel AUC {best['auc']:.3f}, "
        f"{best['lead']:+.3f} over the better null, above the centre prior on "
        f"{100 * best['beats_centre']:.0f} % and above another image's lesions on "
        f"{100 * best['beats_shuffled']:.0f} % of the images)."
    )


def _cell(value, percent: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.0f} %" if percent else f"{value:.3f}"


def table_text(rows: list[dict]) -> str:
    """The table of ``compare`` as aligned text lines."""
    lines = [
        f"  {'map':<28} {'pixel AUC':>9} {'heat on':>8} {'off':>6} {'more on':>8} "
        f"{'> centre':>9} {'> other':>8}"
    ]
    for r in rows:
        lines.append(
            f"  {r['map']:<28} {_cell(r['auc']):>9} {_cell(r['inside']):>8} "
            f"{_cell(r['outside']):>6} {_cell(r['more_inside'], True):>8} "
            f"{_cell(r.get('beats_centre'), True):>9} {_cell(r.get('beats_shuffled'), True):>8}"
        )
    return "\n".join(lines)


def section_html(rows: list[dict], overlays, note: str = "") -> str:
    """A report section (escaped HTML): the table of ``compare`` with the nulls beside the maps,
    the verdict, and the overlays (``(path relative to the report, caption)`` pairs)."""
    head = ("map", "pixel AUC", "mean heat on lesions", "off lesions", "more on lesions",
            "AUC above the centre prior", "AUC above another image's lesions")  # fmt: skip
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(str(v))}</td>"
            for v in (
                r["map"] + (" (null)" if r["map"] in NULLS else ""),
                _cell(r["auc"]),
                _cell(r["inside"]),
                _cell(r["outside"]),
                _cell(r["more_inside"], True),
                _cell(r.get("beats_centre"), True),
                _cell(r.get("beats_shuffled"), True),
            )
        )
        + "</tr>"
        for r in rows
    )
    images = "".join(
        f'<img src="{html.escape(path)}" alt="{html.escape(caption)}" '
        f'title="{html.escape(caption)}">'
        for path, caption in overlays
    )
    return (
        "<table><tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in head)
        + f"</tr>{body}</table><p>{html.escape(verdict(rows))}</p>"
        + (f"<p>{html.escape(note)}</p>" if note else "")
        + f"<div>{images}</div>"
    )
