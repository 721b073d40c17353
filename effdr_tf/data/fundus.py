"""Fundus photograph preprocessing with OpenCV: decode, find the disc, crop, resize, Ben Graham.

Every function takes and returns RGB ``uint8`` arrays. Problems with an input image raise
``RejectedImageError`` with a short reason that ends up in ``rejects.csv``.
"""

from __future__ import annotations

import os
import stat

import cv2
import numpy as np

from effdr_tf.data import image_header, storage

# Callers find the budget and the error here, beside decode.
from effdr_tf.data.image_header import DEFAULT_MAX_MEGAPIXELS as DEFAULT_MAX_MEGAPIXELS
from effdr_tf.data.image_header import DEFAULT_MAX_PIXELS, RejectedImageError

PREPROCESS_MODES = ("crop", "btgraham", "none")
# Ben Graham's Kaggle 2015 processing as in tfds diabetic_retinopathy_detection/btgraham-300:
# the circle kept is 0.9 of the radius, blur sigma is radius / 30, grey outside is 128.
BTGRAHAM_MASK_RATIO = 0.9
BTGRAHAM_BLUR_DIVISOR = 30.0
# The scaled photograph may be at most this many times the output size (a disc spanning a
# third of the frame gives about 3.7): what btgraham allocates stays in proportion to it.
BTGRAHAM_MAX_UPSCALE = 4.0


def _is_truncated(data: bytes) -> bool:
    """JPEGs end with the EOI marker (some writers append a little after it) and PNGs with an
    IEND chunk; decoders silently pad a truncated file with grey instead of failing."""
    if data[:2] == b"\xff\xd8":
        return b"\xff\xd9" not in data[-1024:]
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return b"IEND" not in data[-64:]
    return False


_REDUCED_FLAGS = {
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}


def _jpeg_reduction(header: image_header.ImageHeader, min_side: int | None) -> int:
    """The largest JPEG DCT-domain reduction (1, 2, 4, 8) that keeps ``min_side`` pixels.

    libjpeg can decode at 1/2, 1/4 or 1/8 scale for a fraction of the cost of a full decode;
    an EyePACS photograph (about 3000 x 2000) written at 512 px needs only half its pixels.
    """
    if min_side is None or header.format != "jpeg":
        return 1
    factor = 1
    while factor < 8 and min(header.width, header.height) / (factor * 2) >= min_side:
        factor *= 2
    return factor


NOT_A_REGULAR_FILE = "not a regular file (a named pipe, socket or device)"


def _over_limit(size: int, max_pixels: float, limit: int) -> RejectedImageError:
    return RejectedImageError(
        f"file is {size / 1e6:.1f} MB, larger than an image within the "
        f"{max_pixels / 1e6:g} megapixel limit can be ({limit / 1e6:.1f} MB; --max_megapixels)"
    )


def _read_url(path: str, max_pixels: float | None, limit: int | None) -> bytes:
    """``read`` for a file in a bucket: the size is checked before any byte is fetched."""
    try:
        size = storage.size(path)
        if limit is not None and size > limit:
            raise _over_limit(size, max_pixels, limit)
        data = storage.read_bytes(path, limit)
    except RejectedImageError:
        raise
    except Exception as e:  # tf.errors.OpError: not found, permission denied, network
        reason = getattr(e, "message", None) or str(e) or type(e).__name__
        raise RejectedImageError(f"cannot read file: {reason.splitlines()[0]}") from e
    if limit is not None and len(data) > limit:
        raise RejectedImageError(f"file is over {limit / 1e6:.1f} MB (--max_megapixels)")
    return data


def read(path: str, max_pixels: float | None = DEFAULT_MAX_PIXELS) -> bytes:
    """The bytes of an image file, refusing files larger than any image within ``max_pixels``
    can be (``image_header.max_file_bytes``) before reading them."""
    limit = image_header.max_file_bytes(max_pixels)
    if storage.is_url(path):
        return _read_url(path, max_pixels, limit)
    try:
        # Non-blocking open: a named pipe would otherwise wait for a writer for ever.
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            status = os.fstat(f.fileno())
            if not stat.S_ISREG(status.st_mode):
                raise RejectedImageError(NOT_A_REGULAR_FILE)
            size = status.st_size
            if limit is not None and size > limit:
                raise _over_limit(size, max_pixels, limit)
            # Bounded even for a file that grows while it is read; the request is no larger
            # than the file, as read(n) allocates n bytes before reading.
            data = f.read() if limit is None else f.read(min(size, limit) + 1)
    except OSError as e:
        raise RejectedImageError(f"cannot read file: {e.strerror or e}") from e
    if limit is not None and len(data) > limit:
        raise RejectedImageError(f"file is over {limit / 1e6:.1f} MB (--max_megapixels)")
    return data


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """8-bit copy of a deeper image without full-size temporaries: whole-image float32 copies
    (12 bytes a pixel each, several alive at once) took 5.1 GB for a 12000 x 12000 16-bit PNG."""
    if image.dtype == np.uint16:
        # Rounds v / 257 to the nearest integer, as np.round(v / 257.0) does.
        return cv2.convertScaleAbs(image, alpha=1.0 / 257.0)
    top = float(image.max()) or 1.0
    out = np.empty(image.shape, np.uint8)
    rows = max(1, (1 << 20) // max(1, image[0].size))
    for y in range(0, image.shape[0], rows):
        strip = image[y : y + rows].astype(np.float32) / top * 255.0
        out[y : y + rows] = np.clip(strip, 0, 255).astype(np.uint8)
    return out


def decode(
    data: bytes, min_side: int | None = None, max_pixels: float | None = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decodes JPEG/PNG/TIFF/BMP bytes to RGB uint8, within a pixel budget.

    Grayscale and CMYK images are converted to RGB, 16-bit images scaled to 8 bits, and an
    alpha channel dropped: those are converted, not rejected. The size is read from the header
    first (``image_header``): an image over ``max_pixels`` is rejected before any decoding, and
    other formats are not handed to OpenCV at all.

    Args:
        data: the encoded image.
        min_side: if given, a large JPEG may be decoded at a reduced scale whose shorter side
            is still at least this many pixels.
        max_pixels: the budget, in pixels as the header declares them (16-bit images count
            twice; see ``image_header.check_budget``); None for no limit.
    """
    if not data:
        raise RejectedImageError("empty file")
    if _is_truncated(data):
        raise RejectedImageError("truncated image file")
    header = image_header.read_header(data)
    image_header.check_budget(header, max_pixels)
    buffer = np.frombuffer(data, np.uint8)
    factor = _jpeg_reduction(header, min_side)
    try:
        if factor > 1:
            image = cv2.imdecode(buffer, _REDUCED_FLAGS[factor])
        else:
            image = cv2.imdecode(buffer, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    except cv2.error as e:  # OpenCV's own limits (2^30 pixels), or a decoder error
        raise RejectedImageError(f"not a decodable image ({_opencv_reason(e)})") from e
    if image is None or image.size == 0:
        raise RejectedImageError("not a decodable image")
    if image.dtype != np.uint8:
        image = _to_uint8(image)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)  # in place: no second copy


def _opencv_reason(error: Exception) -> str:
    """The reason in an OpenCV message, without the ``OpenCV(x) file:line: error:`` before it."""
    return " ".join(str(error).split(" error: ", 1)[-1].split()) or type(error).__name__


def describe_failure(error: Exception) -> str:
    """The one-line reason recorded for an image that failed: a ``RejectedImageError``'s own
    message, or the type and message of anything unexpected."""
    if isinstance(error, RejectedImageError):
        return str(error)
    message = " ".join(str(error).split())
    return f"unexpected error while preprocessing: {type(error).__name__}: {message}"


def _intensity(image: np.ndarray, max_side: int = 512) -> tuple[np.ndarray, float]:
    """A small blurred max-over-channels image for disc detection, and its scale factor."""
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    small = (
        image
        if scale == 1.0
        else cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    )
    gray = cv2.GaussianBlur(small.max(axis=2), (5, 5), 0)
    return gray, scale


def check_quality(image: np.ndarray) -> None:
    """Rejects images no grader could use: nearly black or nearly uniform."""
    gray, _ = _intensity(image, max_side=256)
    if np.percentile(gray, 99) < 15:
        raise RejectedImageError("nearly black image")
    if gray.std() < 2.0:
        raise RejectedImageError("nearly uniform image")


# Gradability thresholds (``assess_gradability``), on the field of view scaled to
# GRADABILITY_DIAMETER pixels across. Calibrated on the ``varied`` synthetic preset and checked on
# real photographs (skimage's retina passes with a wide margin on every measure).
GRADABILITY_DIAMETER = 128
MIN_FIELD_BRIGHTNESS = 40.0  # median of the brightest channel within the field of view
MIN_SHARPNESS = 2.0  # relative high-frequency energy of the green channel, in percent
MAX_SATURATED_SHARE = 0.06  # share of the field of view with every channel at 245 or above


def gradability_measures(image: np.ndarray) -> dict[str, float]:
    """Brightness, sharpness and saturation of the field of view, independent of resolution.

    ``brightness``: median of the brightest channel within the field of view (0-255).
    ``sharpness``: mean absolute difference between the green channel and its Gaussian blur
    (sigma 1 px), over the mean green level, in percent, with the field of view scaled to
    ``GRADABILITY_DIAMETER`` pixels across and its rim left out.
    ``saturated``: share of the field of view where every channel is at 245 or above.
    """
    h, w = image.shape[:2]
    # The field of view: brighter than a tenth of the bright end, with a low floor so that an
    # underexposed photograph still has one.
    small_scale = min(1.0, 256 / max(h, w))
    small = cv2.resize(image, None, fx=small_scale, fy=small_scale, interpolation=cv2.INTER_AREA)
    gray = small.max(axis=2).astype(np.float32)
    threshold = max(4.0, 0.1 * float(np.percentile(gray, 99)))
    fov = gray > threshold
    if fov.mean() < 0.02:
        return {"brightness": 0.0, "sharpness": 0.0, "saturated": 0.0, "field": float(fov.mean())}
    rows, cols = np.flatnonzero(fov.any(axis=1)), np.flatnonzero(fov.any(axis=0))
    diameter = max(cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1) / small_scale
    scale = min(1.0, GRADABILITY_DIAMETER / diameter)
    norm = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    norm_fov = cv2.resize(fov.astype(np.uint8), (norm.shape[1], norm.shape[0])) > 0
    inner = cv2.erode(norm_fov.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    if not inner.any():
        inner = norm_fov
    green = norm[..., 1].astype(np.float32)
    detail = np.abs(green - cv2.GaussianBlur(green, (0, 0), 1.0))
    sharpness = 100 * float(detail[inner].mean()) / max(1.0, float(green[inner].mean()))
    saturated = (small.min(axis=2) >= 245)[fov].mean()
    return {
        "brightness": float(np.median(gray[fov])),
        "sharpness": sharpness,
        "saturated": float(saturated),
        "field": float(fov.mean()),
    }


def assess_gradability(image: np.ndarray) -> tuple[bool, list[str], dict[str, float]]:
    """Whether a grader could use the photograph: not too dark, in focus, not washed out.

    Not applied by ``preprocess`` (the builder keeps its lenient ``check_quality``); call it
    where ungradable photographs should be set aside.

    Returns:
        (gradable, reasons it is not, ``gradability_measures``).
    """
    measures = gradability_measures(image)
    reasons = []
    if measures["brightness"] < MIN_FIELD_BRIGHTNESS:
        reasons.append(
            f"too dark (field median {measures['brightness']:.0f} < {MIN_FIELD_BRIGHTNESS:.0f})"
        )
    if measures["sharpness"] < MIN_SHARPNESS:
        reasons.append(f"blurred (sharpness {measures['sharpness']:.2f} < {MIN_SHARPNESS})")
    if measures["saturated"] > MAX_SATURATED_SHARE:
        reasons.append(f"overexposed ({100 * measures['saturated']:.0f} % of the field saturated)")
    return not reasons, reasons, measures


def find_disc(image: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (x0, y0, x1, y1) of the fundus disc, excluding the black border.

    A pixel is fundus when it is brighter than a tenth of the bright end of the image (with a
    floor for noisy borders); rows and columns count as fundus when more than 2 % of them is.
    Discs clipped at the top and bottom keep their full width, so the box is then wider than
    tall, and ``crop_and_resize`` pads it back to a square.
    """
    gray, scale = _intensity(image)
    threshold = max(12.0, 0.1 * float(np.percentile(gray, 99)))
    mask = gray > threshold
    rows = np.flatnonzero(mask.mean(axis=1) > 0.02)
    cols = np.flatnonzero(mask.mean(axis=0) > 0.02)
    if rows.size == 0 or cols.size == 0:
        raise RejectedImageError("no fundus disc found")
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    gh, gw = gray.shape
    if (y1 - y0) < 0.1 * gh or (x1 - x0) < 0.1 * gw or mask[y0:y1, x0:x1].mean() < 0.3:
        raise RejectedImageError("no fundus disc found")
    h, w = image.shape[:2]
    return (
        max(0, int(x0 / scale)),
        max(0, int(y0 / scale)),
        min(w, int(np.ceil(x1 / scale))),
        min(h, int(np.ceil(y1 / scale))),
    )


def resize_and_pad(image: np.ndarray, size: int, fill: int = 0) -> np.ndarray:
    """Resizes so the longer side is ``size``, keeping the aspect ratio, and pads to a square."""
    h, w = image.shape[:2]
    if h == w == size:
        return image
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    resized = cv2.resize(image, (nw, nh), interpolation=interpolation)
    top, left = (size - nh) // 2, (size - nw) // 2
    out = np.full((size, size, 3), fill, np.uint8)
    out[top : top + nh, left : left + nw] = resized
    return out


def crop_and_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Crops the black border around the disc, then resizes and pads to ``size`` x ``size``."""
    x0, y0, x1, y1 = find_disc(image)
    return resize_and_pad(image[y0:y1, x0:x1], size)


def local_average(image: np.ndarray, sigma: float) -> np.ndarray:
    """A wide Gaussian blur, computed on a smaller copy and scaled back up.

    A Gaussian of sigma 10 px or more keeps only low frequencies, so blurring a copy shrunk by
    up to 4x (area averaging adds a variance of only factor^2 / 12) and enlarging it again gives
    the same result within about one grey level, at a fraction of the cost.
    """
    factor = int(min(4, max(1, sigma // 2.5)))
    if factor == 1:
        return cv2.GaussianBlur(image, (0, 0), sigma)
    h, w = image.shape[:2]
    small = cv2.resize(
        image, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_AREA
    )
    small = cv2.GaussianBlur(small, (0, 0), sigma / factor)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def btgraham(image: np.ndarray, size: int) -> np.ndarray:
    """Ben Graham's local-average colour subtraction, the tfds ``btgraham-300`` procedure.

    The radius is measured on the middle row (pixels whose channel sum exceeds a tenth of the
    row mean); the image is scaled so the radius is ``size / 1.8`` (the kept circle, 0.9 of the
    radius, then spans ``size``; tfds uses radius 300); ``4 * img - 4 * GaussianBlur(radius/30)
    + 128``; grey 128 outside the circle; crop to the circle's square.
    """
    target_radius = size / (2 * BTGRAHAM_MASK_RATIO)
    row = image[image.shape[0] // 2].astype(np.float64).sum(axis=1)
    radius = (row > row.mean() / 10.0).sum() / 2.0
    if radius < 1.0:
        raise RejectedImageError("no fundus disc found (empty middle row)")
    scale = target_radius / radius
    # A disc spans most of a photograph's width (a third at the least); a narrow bright band
    # would be scaled up to gigabytes.
    if max(image.shape[:2]) * scale > BTGRAHAM_MAX_UPSCALE * size:
        raise RejectedImageError(
            f"no fundus disc found (the middle row's bright part, {2 * radius:.0f} of "
            f"{image.shape[1]} pixels, is too narrow)"
        )
    scaled = cv2.resize(image, None, fx=scale, fy=scale)
    blurred = local_average(scaled, target_radius / BTGRAHAM_BLUR_DIVISOR)
    graham = cv2.addWeighted(scaled, 4, blurred, -4, 128)
    h, w = graham.shape[:2]
    keep = int(target_radius * BTGRAHAM_MASK_RATIO)
    mask = np.zeros((h, w), np.uint8)
    cv2.circle(mask, (w // 2, h // 2), keep, 1, thickness=-1)
    graham = np.where(mask[..., None] == 1, graham, np.uint8(128))
    y0, y1 = max(h // 2 - keep, 0), min(h // 2 + keep, h)
    x0, x1 = max(w // 2 - keep, 0), min(w // 2 + keep, w)
    return resize_and_pad(graham[y0:y1, x0:x1], size, fill=128)


def preprocess(image: np.ndarray, mode: str, size: int) -> np.ndarray:
    """One of ``PREPROCESS_MODES`` to a ``size`` x ``size`` RGB uint8 image."""
    if mode == "none":
        return resize_and_pad(image, size)
    check_quality(image)
    if mode == "crop":
        return crop_and_resize(image, size)
    if mode == "btgraham":
        return btgraham(image, size)
    raise ValueError(f"unknown preprocess mode {mode!r}")


def encode(image: np.ndarray, image_format: str = "jpeg", quality: int = 95) -> bytes:
    """RGB uint8 to JPEG or PNG bytes."""
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if image_format == "jpeg":
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    elif image_format == "png":
        ok, buf = cv2.imencode(".png", bgr)
    else:
        raise ValueError(f"unknown image format {image_format!r}")
    if not ok:
        raise RejectedImageError(f"could not encode as {image_format}")
    return buf.tobytes()
