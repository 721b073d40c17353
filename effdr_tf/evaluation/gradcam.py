"""Grad-CAM heatmaps from the last convolutional stage of an EfficientNet.

The layer is found by structure, not by a fixed name: the last layer whose output is a 4-D
feature map (the head's activation in our models and keras.applications', ``top_activation``).
Heat is ReLU(sum_c mean_xy(d score / d A_c) * A_c), resized to the image and scaled to [0, 1].
"""

from __future__ import annotations

import cv2
import keras
import numpy as np
import tensorflow as tf


def last_feature_layer(model) -> keras.layers.Layer:
    """The last layer with a spatial (rank-4) output before pooling."""
    for layer in reversed(model.layers):
        shape = getattr(layer, "output", None)
        if shape is not None and len(layer.output.shape) == 4:
            return layer
    raise ValueError("the model has no 4-D feature map to explain")


def heatmaps(model, images, classes=None, head: str = "softmax") -> np.ndarray:
    """Grad-CAM for ``images`` (float32 [B, H, W, 3], the model's input) towards ``classes``
    (default: each image's predicted class); returns [B, H, W] in [0, 1].

    A ``regression`` or ``ordinal`` head has no per-class logit; its map follows the sum of its
    outputs (the grade, or the conditional logits of each higher grade), which rises with the
    grade: where the evidence for a worse grade lies.
    """
    layer = last_feature_layer(model)
    probe = keras.Model(model.inputs, [layer.output, model.output])
    images = tf.convert_to_tensor(images, tf.float32)
    with tf.GradientTape() as tape:
        features, logits = probe(images, training=False)
        logits = tf.cast(logits, tf.float32)
        if head != "softmax":
            score = tf.reduce_sum(logits)
        else:
            if classes is None:
                classes = tf.argmax(logits, -1)
            score = tf.reduce_sum(tf.gather(logits, classes, batch_dims=1))
    grads = tape.gradient(score, features)
    weights = tf.reduce_mean(tf.cast(grads, tf.float32), axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * tf.cast(features, tf.float32), -1))
    cam = tf.image.resize(cam[..., None], images.shape[1:3], method="bilinear")[..., 0]
    top = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
    return (cam / tf.maximum(top, 1e-12)).numpy()


def overlay_png(image_rgb: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> bytes:
    """The photograph with the heatmap (JET colours) blended over it, as PNG bytes."""
    image = np.clip(image_rgb, 0, 255).astype(np.uint8)
    colours = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)  # BGR
    blended = cv2.addWeighted(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), 1 - alpha, colours, alpha, 0)
    ok, data = cv2.imencode(".png", blended)
    if not ok:
        raise ValueError("cannot encode the overlay")
    return data.tobytes()


def lesion_focus(heat, lesions, region=None, inside: float = 0.5, outside: float = 0.02) -> dict:
    """How much of the heat lies on known lesions (synthetic data, where they are drawn).

    Args:
        heat: [B, H, W] Grad-CAM maps in [0, 1].
        lesions: [B, H, W] lesion opacity in [0, 1]; pixels above ``inside`` count as lesion,
            below ``outside`` as background (the soft edges in between count as neither).
        region: optional [B, H, W] bool, where background may lie (e.g. the fundus disc, so the
            black corners, which no model looks at, do not flatter the comparison).

    Returns:
        {"inside": mean over images of the mean heat on lesions, "outside": the same on the
        background, "more_inside": the share of images with more heat on their lesions than
        on their background, "images": how many images had both}.
    """
    heat, lesions = np.asarray(heat, np.float32), np.asarray(lesions, np.float32)
    region = np.ones(heat.shape, bool) if region is None else np.asarray(region, bool)
    on, off = [], []
    for h, lesion, keep in zip(heat, lesions, region, strict=True):
        inner, outer = lesion > inside, (lesion < outside) & keep
        if inner.any() and outer.any():
            on.append(float(h[inner].mean()))
            off.append(float(h[outer].mean()))
    if not on:
        return {"inside": None, "outside": None, "more_inside": None, "images": 0}
    return {
        "inside": float(np.mean(on)),
        "outside": float(np.mean(off)),
        "more_inside": float(np.mean(np.greater(on, off))),
        "images": len(on),
    }
