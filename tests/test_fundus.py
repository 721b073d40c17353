"""Fundus preprocessing: decoding odd files, finding the disc, Ben Graham against tfds."""

import io

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data

from benchmarks.tfds_btgraham import btgraham_reference
from effdr_tf.data import fundus


def _png(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))[1].tobytes()


def _pil_bytes(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def test_btgraham_matches_tfds_procedure():
    retina = data.retina()
    want = btgraham_reference(retina, radius=300)
    got = fundus.btgraham(retina, size=540)  # radius 540 / 1.8 = 300
    assert got.shape == want.shape == (540, 540, 3)
    assert np.abs(got.astype(float) - want.astype(float)).mean() <= 2.0
    assert (got[0, 0] == 128).all()  # grey outside the circle


def test_odd_files_are_converted_not_rejected():
    cat = data.chelsea()
    cmyk = fundus.decode(_pil_bytes(Image.fromarray(cat).convert("CMYK"), "JPEG"))
    assert cmyk.shape == cat.shape and np.abs(cmyk.astype(int) - cat).mean() < 3
    gray = fundus.decode(_pil_bytes(Image.fromarray(cat).convert("L"), "JPEG"))
    assert gray.shape == cat.shape and (gray[..., 0] == gray[..., 2]).all()
    sixteen = cv2.imencode(".png", (cat.astype(np.uint16) * 257)[..., ::-1])[1].tobytes()
    np.testing.assert_array_equal(fundus.decode(sixteen), cat)
    rgba = _pil_bytes(Image.fromarray(cat).convert("RGBA"), "PNG")
    np.testing.assert_array_equal(fundus.decode(rgba), cat)


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"", "empty file"),
        (b"GIF89a not really", "not a decodable image"),
        (b"image,level\n1,2\n", "not a decodable image"),
    ],
)
def test_undecodable_inputs_are_rejected_with_a_reason(payload, reason):
    with pytest.raises(fundus.RejectedImageError, match=reason):
        fundus.decode(payload)


def test_truncated_files_are_rejected():
    retina = data.retina()
    jpeg = cv2.imencode(".jpg", retina)[1].tobytes()
    png = _png(retina[:200, :200])
    for payload in (jpeg[: len(jpeg) // 2], png[: len(png) - 30]):
        with pytest.raises(fundus.RejectedImageError, match="truncated"):
            fundus.decode(payload)
    assert fundus.decode(jpeg + b"\x00\x00").shape == retina.shape  # padding after EOI is fine


def test_disc_crop_removes_borders_and_keeps_clipped_discs_round():
    retina = data.retina()
    framed = cv2.copyMakeBorder(retina, 100, 50, 300, 40, cv2.BORDER_CONSTANT, value=0)
    x0, y0, x1, y1 = fundus.find_disc(framed)
    assert abs(x0 - 300) <= 15 and abs(y0 - 100) <= 15
    assert abs(x1 - (300 + 1411)) <= 15 and abs(y1 - (100 + 1411)) <= 15

    clipped = retina[300:-300]  # disc cut at top and bottom, as in many EyePACS photos
    out = fundus.crop_and_resize(clipped, 224)
    assert out.shape == (224, 224, 3)
    band = (224 - round(224 * (1411 - 600) / 1411)) // 2  # padding rows above and below
    assert out[: band - 2].max() == 0 and out[-band + 2 :].max() == 0
    assert out[band + 5 : -band - 5, 100:124].mean() > 40  # the disc fills the middle


@pytest.mark.parametrize(
    "image, reason",
    [
        (np.zeros((300, 400, 3), np.uint8) + 3, "nearly black"),
        (np.full((300, 400, 3), 140, np.uint8), "nearly uniform"),
    ],
)
def test_quality_flags(image, reason):
    with pytest.raises(fundus.RejectedImageError, match=reason):
        fundus.preprocess(image, "crop", 224)


def test_no_disc_is_rejected():
    image = np.zeros((400, 400, 3), np.uint8)
    image[:6, :] = 200  # a bright strip, no disc
    with pytest.raises(fundus.RejectedImageError, match="no fundus disc"):
        fundus.preprocess(image, "crop", 224)


def test_encode_round_trip():
    image = fundus.crop_and_resize(data.retina(), 64)
    np.testing.assert_array_equal(fundus.decode(fundus.encode(image, "png")), image)
    jpeg = fundus.decode(fundus.encode(image, "jpeg", 95))
    assert np.abs(jpeg.astype(int) - image).mean() < 3


def test_large_jpegs_decode_at_reduced_scale_when_the_output_is_small():
    photo = cv2.resize(data.retina(), (2000, 2000), interpolation=cv2.INTER_CUBIC)
    photo = cv2.copyMakeBorder(photo, 0, 0, 500, 500, cv2.BORDER_CONSTANT, value=0)
    jpeg = cv2.imencode(".jpg", photo[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    full = fundus.decode(jpeg)
    assert full.shape == (2000, 3000, 3)
    half = fundus.decode(jpeg, min_side=675)  # 540 px output with the builder's margin
    assert half.shape == (1000, 1500, 3)
    assert fundus.decode(jpeg, min_side=300).shape == (500, 750, 3)
    assert fundus.decode(jpeg, min_side=1200).shape == full.shape
    a = fundus.crop_and_resize(full, 540).astype(float)
    b = fundus.crop_and_resize(half, 540).astype(float)
    assert np.abs(a - b).mean() < 2.0
