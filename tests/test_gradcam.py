"""Explanations: maps measured against two nulls, a fixed heat scale, overlays that stay on the
fundus, and Grad-CAM that records gradients only after the explained layer."""

import cv2
import numpy as np
import pytest

from effdr_tf.evaluation import gradcam


def _lesions_near_the_centre(n=40, size=48, seed=0):
    """Discs of lesions within 0.4 of the centre, as the synthetic photographs draw them."""
    rng = np.random.default_rng(seed)
    lesions = np.zeros((n, size, size), np.float32)
    y, x = np.mgrid[0:size, 0:size]
    for i in range(n):
        for _ in range(3):
            r, a = rng.uniform(0, 0.35 * size), rng.uniform(0, 2 * np.pi)
            cy, cx = size / 2 + r * np.sin(a), size / 2 + r * np.cos(a)
            lesions[i][(y - cy) ** 2 + (x - cx) ** 2 < 4] = 1.0
    regions = (y - size / 2) ** 2 + (x - size / 2) ** 2 < (0.48 * size) ** 2
    return lesions, np.broadcast_to(regions, lesions.shape)


def test_a_centre_weighted_map_does_not_beat_the_centre_prior():
    """The figure the demo reported had no null: a map that is only centre-weighted puts more
    heat on lesions drawn near the centre than elsewhere, and must not be claimed as focus."""
    lesions, regions = _lesions_near_the_centre()
    blob = gradcam.centre_prior(lesions.shape, sigma=0.2)
    focus = gradcam.lesion_focus(blob, lesions, regions)
    assert focus["inside"] > focus["outside"] and focus["more_inside"] > 0.9  # the old claim
    rows = {r["map"]: r for r in gradcam.compare({"centre blob": blob}, lesions, regions)}
    assert set(rows) == {"centre blob", *gradcam.NULLS}
    assert rows["centre blob"]["lead"] <= 0.01
    assert "No map beats both nulls" in gradcam.verdict(list(rows.values()))


def test_a_map_on_the_lesions_beats_both_nulls_and_is_named():
    lesions, regions = _lesions_near_the_centre()
    rng = np.random.default_rng(1)
    good = cv2.GaussianBlur(lesions.transpose(1, 2, 0), (0, 0), 1.5).transpose(2, 0, 1)
    good = good + rng.uniform(0, 0.05, good.shape).astype(np.float32)
    rows = gradcam.compare({"on the lesions": good}, lesions, regions)
    best = rows[0]
    assert best["lead"] > 0.1 and best["beats_centre"] > 0.9 and best["beats_shuffled"] > 0.9
    # The second null is another image's lesions, never the image's own.
    other = next(r for r in rows if r["map"] == gradcam.NULLS[1])
    assert other["auc"] < 0.75
    text = gradcam.verdict(rows)
    assert text.startswith("on the lesions beats both nulls")
    table = gradcam.table_text(rows)
    assert all(name in table for name in gradcam.NULLS)
    html = gradcam.section_html(rows, [("../gradcam/a.png", "grade 3 <p=0.9>")])
    assert html.count("(null)") == 2 and 'src="../gradcam/a.png"' in html
    assert "&lt;p=0.9&gt;" in html


def test_heat_is_on_one_fixed_scale_not_each_images_own_maximum():
    """A healthy eye whose map is weak stays cool; per-image scaling made it as red as a
    diseased one."""
    weak = np.full((1, 8, 8), 0.01, np.float32)
    strong = np.full((1, 8, 8), 1.0, np.float32)
    scale = gradcam.fit_scale(np.concatenate([weak, strong]))
    assert gradcam.unit(weak, scale).max() < 0.05
    assert gradcam.unit(strong, scale).max() == 1.0


def test_overlay_has_no_heat_on_the_border_and_carries_a_colour_bar_and_caption():
    size = 96
    image = np.zeros((size, size, 3), np.uint8)
    cv2.circle(image, (size // 2, size // 2), size // 3, (40, 160, 40), -1)
    heat = np.ones((12, 12), np.float32)  # coarser than the photograph: resized to it
    png = gradcam.overlay_png(image, heat, caption="grade 3 (p=0.90)", scale_label="2.5")
    out = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    band = out.shape[0] - size
    assert band > 0 and out.shape[1] > size  # a caption above, a colour bar beside
    photo = out[band:, :size]
    assert photo[:8, :8].max() == 0  # the black border stays black
    centre = size // 2
    assert np.abs(photo[centre, centre].astype(int) - image[centre, centre, ::-1]).max() > 40
    bar = out[band:, size + 4 : size + 16]
    assert bar[2, :, 2].mean() > bar[2, :, 0].mean() and bar[-3, :, 0].mean() > bar[-3, :, 2].mean()
    # No heat: the photograph unchanged, whatever the scale.
    plain = gradcam.overlay_png(image, np.zeros((12, 12), np.float32))
    plain = cv2.imdecode(np.frombuffer(plain, np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(plain[:, :size], image[..., ::-1])


@pytest.mark.parametrize(("method", "stage"), [("gradcam", "last"), ("hirescam", "stride16")])
def test_cutting_the_model_at_the_layer_gives_the_full_tapes_maps(method, stage):
    """Gradients recorded only after the explained layer are the gradients of the whole
    network's tape (the chain rule stops at the layer): same maps, a fraction of the memory."""
    import keras
    import tensorflow as tf

    from effdr_tf.models import network

    model = network.build_efficientnet("tiny", input_shape=(64, 64, 3))
    images = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    layer = gradcam.feature_layer(model, stage)
    assert layer.output.shape[1] == (2 if stage == "last" else 4)
    probe = keras.Model(model.inputs, [layer.output, model.output])
    with tf.GradientTape() as tape:
        features, logits = probe(images)
        score = tf.reduce_sum(gradcam._score(logits, None, "softmax"))
    grads = tape.gradient(score, features)
    if method == "gradcam":
        grads = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    want = tf.nn.relu(tf.reduce_sum(grads * features, -1))
    want = tf.image.resize(want[..., None], (64, 64))[..., 0].numpy()
    got = gradcam.heatmaps(model, images, method=method, stage=stage)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * max(1.0, want.max()))
    assert got.max() > 0
