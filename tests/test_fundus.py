"""Fundus preprocessing: decoding odd files, finding the disc, Ben Graham against tfds."""

import io
import re
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data

from benchmarks.decode_memory import patched_jpeg, zeros_png
from benchmarks.tfds_btgraham import btgraham_reference
from effdr_tf.data import fundus, image_header


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


def test_btgraham_refuses_a_narrow_band_instead_of_scaling_it_up():
    """A 6-pixel bright band in the middle row would be scaled by 60x (30 GB asked of OpenCV)."""
    band = np.zeros((1000, 1000, 3), np.uint8)
    band[:, 497:503] = 200
    with pytest.raises(fundus.RejectedImageError, match="6 of 1000 pixels, is too narrow"):
        fundus.btgraham(band, 128)
    # A disc spanning a third of the frame is still processed.
    third = np.zeros((600, 900, 3), np.uint8)
    cv2.circle(third, (450, 300), 150, (180, 90, 40), thickness=-1)
    assert fundus.btgraham(third, 128).shape == (128, 128, 3)


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


# --------------------------------------------------------------------------------------------
# Image headers and the pixel budget

_TIFF_CODES = {3: "H", 4: "I", 9: "i", 11: "f", 16: "Q"}


def _tiff(
    width, height, *, order="<", big=False, bits=8, tile=None, tags=None, pixels=True
) -> bytes:
    """An uncompressed RGB TIFF of zeros: one strip, or ``tile`` = (w, h) tiles; ``tags``
    {tag: (type, values)} adds or replaces directory entries; without ``pixels``, the header
    alone."""
    sample = bits // 8
    if tile:
        count = -(-width // tile[0]) * -(-height // tile[1])
        chunk = tile[0] * tile[1] * 3 * sample
    else:
        count, chunk = 1, width * height * 3 * sample
    offset_type = 16 if big else 4
    entries = {
        256: (4, [width]), 257: (4, [height]), 258: (3, [bits] * 3), 259: (3, [1]),
        262: (3, [2]), 277: (3, [3]), 284: (3, [1]),
    }  # fmt: skip
    if tile:
        entries |= {322: (4, [tile[0]]), 323: (4, [tile[1]])}
        entries |= {324: (offset_type, [0] * count), 325: (4, [chunk % 2**32] * count)}
    else:
        entries |= {273: (offset_type, [0]), 278: (4, [height]), 279: (4, [chunk % 2**32])}
    entries |= tags or {}
    head, entry, value, counter = (16, 20, 8, "Q") if big else (8, 12, 4, "H")
    sizes = {t: len(v) * struct.calcsize(_TIFF_CODES[k]) for t, (k, v) in entries.items()}
    outside = {t: s for t, s in sizes.items() if s > value}
    start = head + struct.calcsize(counter) + len(entries) * entry + value
    data_at = start + sum(outside.values())
    offsets_tag = 324 if tile else 273
    if offsets_tag in entries and entries[offsets_tag][1] == [0] * count:
        entries[offsets_tag] = (offset_type, [data_at + i * chunk for i in range(count)])
    if big:
        out = (b"II+\x00" if order == "<" else b"MM\x00+") + struct.pack(order + "HHQ", 8, 0, head)
    else:
        out = (b"II*\x00" if order == "<" else b"MM\x00*") + struct.pack(order + "I", head)
    out += struct.pack(order + counter, len(entries))
    extra, at = b"", start
    for tag in sorted(entries):
        kind, values = entries[tag]
        packed = struct.pack(f"{order}{len(values)}{_TIFF_CODES[kind]}", *values)
        if tag in outside:
            field, extra, at = (
                struct.pack(order + ("Q" if big else "I"), at),
                extra + packed,
                at + len(packed),
            )
        else:
            field = packed.ljust(value, b"\x00")
        out += struct.pack(order + ("HHQ" if big else "HHI"), tag, kind, len(values)) + field
    out += bytes(value) + extra
    return out + bytes(chunk * count if pixels else 0)


def _bmp(width, height, *, top_down=False, core=False, pixels=True) -> bytes:
    """A 24-bit BMP of zeros; ``core`` uses the old 12-byte header with 16-bit sides."""
    pixels = bytes(((width * 3 + 3) & ~3) * height if pixels else 0)
    if core:
        dib = struct.pack("<IHHHH", 12, width, height, 1, 24)
    else:
        rows = -height if top_down else height
        dib = struct.pack("<IiiHHIIiiII", 40, width, rows, 1, 24, 0, len(pixels), 0, 0, 0, 0)
    start = 14 + len(dib)
    return b"BM" + struct.pack("<IHHI", start + len(pixels), 0, 0, start) + dib + pixels


def _with_chunk(png: bytes, kind: bytes, body: bytes, length: int | None = None) -> bytes:
    """``png`` with a chunk inserted after IHDR; ``length`` overrides the declared length."""
    size = len(body) if length is None else length
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return png[:33] + struct.pack(">I", size) + kind + body + struct.pack(">I", crc) + png[33:]


def _headers_of_real_files():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (37, 53, 3), np.uint8)
    photo = Image.fromarray(rgb)
    exif = Image.Exif()
    exif[0x0112] = 1  # an APP1 segment before the frame header
    with_exif = io.BytesIO()
    photo.save(with_exif, "JPEG", exif=exif.tobytes())
    return {
        "jpeg": _pil_bytes(photo, "JPEG"),
        "jpeg-progressive": cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1],
        "jpeg-cmyk": _pil_bytes(photo.convert("CMYK"), "JPEG"),
        "jpeg-exif": with_exif.getvalue(),
        "png": _png(rgb),
        "png-16bit": cv2.imencode(".png", rgb.astype(np.uint16) * 257)[1],
        "png-palette": _pil_bytes(photo.convert("P"), "PNG"),
        "png-1bit": _pil_bytes(photo.convert("1"), "PNG"),
        "tiff-pil": _pil_bytes(photo, "TIFF"),
        "tiff-opencv-16bit": cv2.imencode(".tif", rgb.astype(np.uint16))[1],
        "tiff-big-endian": _tiff(53, 37, order=">"),
        "tiff-tiled": _tiff(53, 37, tile=(32, 32)),
        "tiff-bigtiff": _tiff(53, 37, big=True),
        "bmp": _pil_bytes(photo, "BMP"),
        "bmp-top-down": _bmp(53, 37, top_down=True),
        "bmp-core-header": _bmp(53, 37, core=True),
    }


@pytest.mark.parametrize("name", list(_headers_of_real_files()))
def test_header_size_is_the_size_the_decoder_gives(name):
    data = bytes(_headers_of_real_files()[name])
    header = image_header.read_header(data)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    assert decoded is not None, name
    assert (header.height, header.width) == decoded.shape[:2] == (37, 53)
    assert header.weight == (2 if "16bit" in name else 1)
    assert fundus.decode(data).shape == (37, 53, 3)


@pytest.mark.parametrize(
    "data",
    [
        patched_jpeg(60000, 60000),
        zeros_png(60000, 60000, rows=1),
        _tiff(60000, 60000, tile=(65536, 65536), pixels=False),
        _tiff(60000, 60000, pixels=False),
        _bmp(60000, 60000, pixels=False),
    ],
    ids=["jpeg", "png", "tiff-tiled", "tiff", "bmp"],
)
def test_images_over_the_budget_are_rejected_before_decoding(data, monkeypatch):
    def no_decoding(*args):
        raise AssertionError("decoded an image over the budget")

    monkeypatch.setattr(cv2, "imdecode", no_decoding)
    assert len(data) <= 4500  # a few KB declaring 3.6 gigapixels
    with pytest.raises(fundus.RejectedImageError) as e:
        fundus.decode(data)
    assert str(e.value) == (
        "image is 60000x60000 (3600.0 megapixels), over the 50 megapixel limit (--max_megapixels)"
    )


def test_the_budget_counts_sample_depth_and_animation():
    eight, sixteen = zeros_png(100, 100), zeros_png(100, 100, depth=16)
    assert fundus.decode(eight, max_pixels=15_000).shape == (100, 100, 3)
    with pytest.raises(fundus.RejectedImageError, match=r"100x100 \(0.0 megapixels, 16-bit: "):
        fundus.decode(sixteen, max_pixels=15_000)
    assert fundus.decode(sixteen, max_pixels=20_000).shape == (100, 100, 3)
    animated = _with_chunk(eight, b"acTL", struct.pack(">II", 2, 0))
    assert image_header.read_header(animated).weight == 4
    with pytest.raises(fundus.RejectedImageError, match="animated: counts as 0.0"):
        fundus.decode(animated, max_pixels=30_000)
    assert image_header.read_header(_tiff(20, 20, bits=32, tags={339: (3, [3] * 3)})).weight == 4
    # Tiles larger than the image are decoded whole: their size counts too.
    with pytest.raises(fundus.RejectedImageError, match=r"TIFF tiles are 4096x4096 \(16.8 mega"):
        fundus.decode(_tiff(16, 16, tile=(4096, 4096), pixels=False), max_pixels=1e6)


def test_a_huge_jpeg_under_a_raised_budget_decodes_at_reduced_scale():
    """400 megapixels declared: over PIL's decompression-bomb limit, which used to cost the
    reduced-scale decode; the size now comes from our own header parser."""
    jpeg = patched_jpeg(20000, 20000)
    assert 2 * Image.MAX_IMAGE_PIXELS < 20000 * 20000
    with pytest.raises(fundus.RejectedImageError, match="400.0 megapixels"):
        fundus.decode(jpeg, min_side=640)
    assert fundus.decode(jpeg, min_side=640, max_pixels=500e6).shape == (2500, 2500, 3)
    assert fundus.decode(jpeg, min_side=5000, max_pixels=500e6).shape == (5000, 5000, 3)


def _sof_at(jpeg: bytes) -> int:
    pos = 2
    while jpeg[pos + 1] not in range(0xC0, 0xC4):
        pos += 2 + struct.unpack_from(">H", jpeg, pos + 2)[0]
    return pos


_JPEG = patched_jpeg(64, 64)
_SOF = _sof_at(_JPEG)
_PNG = zeros_png(16, 16)
_TIFF = _tiff(16, 16)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"\xff\xd8\xff", "JPEG without a frame header"),
        (_JPEG[: _SOF + 6], "JPEG segment runs past the end"),
        (_JPEG[:_SOF] + b"\xff\xda" + _JPEG[_SOF + 2 :], "marker 0xDA before the frame header"),
        (_JPEG[:_SOF] + b"\xff\xc8" + _JPEG[_SOF + 2 :], "marker 0xC8 before the frame header"),
        (_JPEG[: _SOF + 5] + b"\x00\x00" + _JPEG[_SOF + 7 :], "declares a 64x0 image"),
        (_JPEG[:4] + b"\x00\x01" + _JPEG[6:], "JPEG segment runs past the end"),
        (_PNG[:20], "PNG header cut short"),
        (_PNG[:12] + b"IDAT" + _PNG[16:], "PNG without an IHDR chunk first"),
        (_PNG[:16] + struct.pack(">I", 0) + _PNG[20:], "declares a 0x16 image"),
        (_PNG[:16] + struct.pack(">I", 1 << 31) + _PNG[20:], "declares a 2147483648x16 image"),
        (_PNG[:24] + b"\x03" + _PNG[25:], "PNG bit depth 3"),
        (_with_chunk(_PNG, b"tEXt", b"a\x00b", length=1 << 30), "chunk runs past the end"),
        (_with_chunk(_PNG, b"fcTL", struct.pack(">IIIII", 0, 17, 16, 0, 0) + bytes(6)), "frame"),
        (_TIFF[:6], "TIFF header cut short"),
        (_TIFF[:4] + struct.pack("<I", 1 << 20) + _TIFF[8:], "TIFF header cut short"),
        (_TIFF[:4] + struct.pack("<I", 2**32 - 1) + _TIFF[8:], "TIFF header cut short"),
        (_TIFF[:8] + b"\x00\x00" + _TIFF[10:], "TIFF directory runs past the end"),
        (_TIFF[:8] + b"\xff\xff" + _TIFF[10:], "TIFF directory runs past the end"),
        (_tiff(16, 16, tags={256: (11, [16.0])}), "TIFF tag 256 of type 11"),
        (_tiff(16, 16, tags={257: (9, [-16])}), "TIFF tag 257 is negative"),
        (_tiff(16, 16, tags={257: (4, [0])}), "declares a 16x0 image"),
        (_tiff(16, 16, tags={322: (4, [16])}), "tile width without a tile length"),
        (_tiff(16, 16)[:136], "TIFF tag 258 points past the end"),
        (_bmp(16, 16)[:20], "BMP header cut short"),
        (_bmp(16, 16)[:14] + struct.pack("<I", 5) + _bmp(16, 16)[18:], "BMP header of 5 bytes"),
        (_bmp(0, 16), "declares a 0x16 image"),
    ],
)
def test_malformed_headers_are_rejected_with_a_reason(data, reason):
    with pytest.raises(fundus.RejectedImageError, match=re.escape(reason)):
        image_header.read_header(data)
    if not fundus._is_truncated(data):
        with pytest.raises(fundus.RejectedImageError, match="not a decodable image"):
            fundus.decode(data)


def test_mangled_headers_raise_nothing_but_rejected_image_error():
    """Bytes overwritten with extremes (0, 0xFF, random) at random places, the file sometimes
    cut short: every outcome is a header or a reject, never another exception."""
    rng = np.random.default_rng(0)
    files = [_JPEG, _PNG, _TIFF, _tiff(16, 16, order=">", big=True, tile=(16, 16)), _bmp(8, 8)]
    for original in files:
        for _ in range(3000):
            data = bytearray(original[:400])  # every header here ends before byte 400
            for _ in range(rng.integers(1, 4)):
                at, n = int(rng.integers(0, len(data))), int(rng.integers(1, 5))
                patch = [b"\xff" * n, b"\x00" * n, rng.bytes(n)][rng.integers(3)]
                data[at : at + n] = patch[: len(data) - at]
            if rng.random() < 0.5:
                del data[rng.integers(0, len(data) + 1) :]
            try:
                header = image_header.read_header(bytes(data))
            except fundus.RejectedImageError:
                continue
            assert 0 < header.width < 2**32 and 0 < header.height < 2**32 and header.weight >= 1


def test_files_larger_than_the_budget_allows_are_not_read(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(zeros_png(16, 16) + bytes(5_000_000))
    limit = image_header.max_file_bytes(1e6)
    assert limit == 4_000_000 + (16 << 20)
    assert len(fundus.read(str(path), max_pixels=1e6)) == path.stat().st_size
    with pytest.raises(fundus.RejectedImageError, match=r"file is 5.0 MB, larger than an image"):
        fundus.read(str(path), max_pixels=1e6 - 4.5e6 / 4 - (16 << 20) / 4)
    with pytest.raises(fundus.RejectedImageError, match="cannot read file: No such file"):
        fundus.read(str(tmp_path / "absent.png"))


def test_decoder_errors_and_deep_samples():
    with pytest.raises(fundus.RejectedImageError, match="CV_IO_MAX_IMAGE_PIXELS"):
        fundus.decode(patched_jpeg(60000, 60000), max_pixels=None)  # OpenCV's own limit
    assert fundus.describe_failure(ValueError("a\n b")) == (
        "unexpected error while preprocessing: ValueError: a b"
    )
    rgb = np.random.default_rng(1).random((40, 30, 3), np.float32) * 7.0
    data = cv2.imencode(".tif", rgb)[1].tobytes()
    want = np.clip(rgb / rgb.max() * 255.0, 0, 255).astype(np.uint8)[..., ::-1]
    np.testing.assert_array_equal(fundus.decode(data), want)
