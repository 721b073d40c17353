"""What an image file declares about itself, read from its header, and the pixel budget.

Decoders allocate what a header declares before they read a single pixel: a 2 KB JPEG whose
header says 20000 x 20000 costs OpenCV 1.2 GB of output, and one that says 60000 x 60000 makes
it raise. The headers of the four formats the builder accepts (JPEG, PNG, TIFF, BMP) are parsed
here in pure Python, so that an image over the budget is refused before any decoder sees it.
PIL is no help here: ``Image.open`` raises its own decompression-bomb error for large images
while it reads the header.

Every parser follows the decoder OpenCV hands the bytes to (libjpeg-turbo, libpng, libtiff,
OpenCV's BMP reader): it reads the size from the same place, takes the larger value wherever a
file could give two, and refuses what it cannot follow or what would make the decoder allocate
more than the image (a PNG chunk longer than the file), so no file can declare a small size
here and a large one to the decoder. Any problem raises ``RejectedImageError``.
"""

from __future__ import annotations

import dataclasses
import math
import struct

# The largest real fundus photographs are about 18 megapixels (EyePACS, 5184 x 3456); fundus
# cameras built on a DSLR body reach about 36 (7360 x 4912), and a 16-bit export of a 24
# megapixel camera counts 48. 50 keeps all of them while bounding what one worker decodes.
DEFAULT_MAX_MEGAPIXELS = 50.0
DEFAULT_MAX_PIXELS = DEFAULT_MAX_MEGAPIXELS * 1e6

# No encoding of an image within the budget takes more than 4 bytes a counted pixel: 8-bit
# RGBA stored uncompressed, or 16-bit RGBA (counted twice) at 8. On top of that, metadata:
# EXIF, colour profiles, thumbnails.
_FILE_BYTES_PER_PIXEL = 4
_FILE_METADATA_BYTES = 16 << 20

# OpenCV's PNG reader keeps four full-size frames while it composes an animated PNG.
_ANIMATED_PNG_FRAMES = 4


class RejectedImageError(Exception):
    """An input image that cannot or should not be written; the message is the reason."""


@dataclasses.dataclass(frozen=True)
class ImageHeader:
    """The size and depth an image file declares.

    Attributes:
        format: ``jpeg``, ``png``, ``tiff`` or ``bmp``.
        width: pixels.
        height: pixels.
        bits: bits per sample of the decoded image (8, or 16 for a 16-bit PNG or TIFF, ...).
        animated: an animated PNG, whose decoder holds several full-size frames.
        tile_width: TIFF tile width (0 when not tiled): the decoder fills a whole tile at once.
        tile_height: TIFF tile height (0 when not tiled).
    """

    format: str
    width: int
    height: int
    bits: int = 8
    animated: bool = False
    tile_width: int = 0
    tile_height: int = 0

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def weight(self) -> int:
        """How many 8-bit pixels one pixel of this image costs to decode."""
        sample_bytes = 1
        while 8 * sample_bytes < self.bits:  # decoders widen 10-16 bits to 16, 17-32 to 32
            sample_bytes *= 2
        return sample_bytes * (_ANIMATED_PNG_FRAMES if self.animated else 1)


def check_budget(header: ImageHeader, max_pixels: float | None) -> None:
    """Raises ``RejectedImageError`` if decoding ``header``'s image costs more than
    ``max_pixels`` 8-bit pixels; None is no limit.

    The budget counts the pixels the header declares, whatever the decode scale: a JPEG decoded
    at 1/8 scale still counts its full size (a progressive JPEG holds its full-size DCT
    coefficients whatever the scale), so the same file gets the same verdict at any output
    size. Samples wider than 8 bits count their width: a 16-bit image counts twice.
    """
    if max_pixels is None:
        return
    limit = f"over the {max_pixels / 1e6:g} megapixel limit (--max_megapixels)"
    counted = header.pixels * header.weight
    if counted > max_pixels:
        described = f"{header.width}x{header.height} ({header.pixels / 1e6:.1f} megapixels"
        if header.weight > 1:
            kind = f"{header.bits}-bit" if header.bits > 8 else ""
            kind = " ".join(filter(None, [kind, "animated" if header.animated else ""]))
            described += f", {kind}: counts as {counted / 1e6:.1f}"
        raise RejectedImageError(f"image is {described}), {limit}")
    tile = header.tile_width * header.tile_height
    if tile * header.weight > max_pixels:
        raise RejectedImageError(
            f"TIFF tiles are {header.tile_width}x{header.tile_height} "
            f"({tile / 1e6:.1f} megapixels), {limit}"
        )


def max_file_bytes(max_pixels: float | None) -> int | None:
    """The largest file an image within ``max_pixels`` can be; None is no limit."""
    if max_pixels is None or not math.isfinite(max_pixels):
        return None
    return int(max_pixels * _FILE_BYTES_PER_PIXEL) + _FILE_METADATA_BYTES


def read_header(data: bytes) -> ImageHeader:
    """The header of a JPEG, PNG, TIFF or BMP image.

    Raises:
        RejectedImageError: another format, or a header a decoder would refuse or could be
            fooled by (``not a decodable image (...)``).
    """
    if data[:3] == b"\xff\xd8\xff":  # OpenCV hands these, and only these, to libjpeg
        return _jpeg(data)
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return _png(data)
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return _tiff(data)
    if data[:2] == b"BM":
        return _bmp(data)
    raise RejectedImageError("not a decodable image")


def _malformed(what: str) -> RejectedImageError:
    return RejectedImageError(f"not a decodable image ({what})")


def _unpack(fmt: str, data: bytes, at: int, problem: str) -> tuple:
    """``struct.unpack_from`` that refuses offsets outside ``data`` (any size, even 2^64)."""
    if at + struct.calcsize(fmt) > len(data):
        raise _malformed(problem)
    return struct.unpack_from(fmt, data, at)


def _positive(fmt: str, width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise _malformed(f"{fmt} header declares a {width}x{height} image")


# --------------------------------------------------------------------------------------------
# JPEG: markers up to the first frame header (SOFn), walked as libjpeg's read_markers does.

# SOF0-3, 5-7, 9-11, 13-15; C4 (DHT), C8 (JPG) and CC (DAC) share the range but are not frames.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8)])  # TEM, RST0-7: no length field
# Segments libjpeg skips by their length before the frame header.
_SKIPPED = frozenset([0xC4, 0xCC, 0xDB, 0xDC, 0xDD, 0xFE, *range(0xE0, 0xF0)])


def _jpeg(data: bytes) -> ImageHeader:
    pos, size = 2, len(data)
    while True:
        # libjpeg skips garbage up to the next 0xFF, then fill bytes, then a stuffed FF 00.
        while True:
            pos = data.find(b"\xff", pos)
            if pos < 0:
                raise _malformed("JPEG without a frame header")
            while pos < size and data[pos] == 0xFF:
                pos += 1
            if pos >= size:
                raise _malformed("JPEG without a frame header")
            if data[pos] != 0:
                break
        marker = data[pos]
        pos += 1
        if marker in _STANDALONE:
            continue
        if marker not in _SOF and marker not in _SKIPPED:
            # SOI again, SOS or EOI before a frame header, or an unknown marker: libjpeg stops.
            raise _malformed(f"JPEG marker 0x{marker:02X} before the frame header")
        if pos + 2 > size:
            raise _malformed("JPEG header cut short")
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2 or pos + length > size:
            raise _malformed("JPEG segment runs past the end of the file")
        if marker in _SOF:
            if length < 8:
                raise _malformed("JPEG frame header cut short")
            precision, height, width = struct.unpack_from(">BHH", data, pos + 2)
            # Height 0 is set later by a DNL marker, which libjpeg does not support.
            _positive("JPEG", width, height)
            return ImageHeader("jpeg", width, height, bits=max(8, precision))
        pos += length


# --------------------------------------------------------------------------------------------
# PNG: IHDR, then every chunk's length checked.


def _png(data: bytes) -> ImageHeader:
    size = len(data)
    if size < 33:
        raise _malformed("PNG header cut short")
    if data[8:16] != b"\x00\x00\x00\x0dIHDR":
        raise _malformed("PNG without an IHDR chunk first")
    width, height, depth, colour = struct.unpack_from(">IIBB", data, 16)
    if width > 0x7FFFFFFF or height > 0x7FFFFFFF:  # libpng refuses 2^31 and above
        raise _malformed(f"PNG header declares a {width}x{height} image")
    _positive("PNG", width, height)
    if depth not in (1, 2, 4, 8, 16) or colour not in (0, 2, 3, 4, 6):
        raise _malformed(f"PNG bit depth {depth}, colour type {colour}")
    # OpenCV reads chunks into a buffer of the declared length before it reads the bytes (a
    # 100-byte file declaring a 1 GB chunk costs 1 GB): up to the first IDAT, and to IEND in
    # an animated PNG (an acTL chunk before the first IDAT). Every such chunk must fit.
    pos, animated, seen_idat = 33, False, False
    while pos < size:
        if pos + 8 > size:
            raise _malformed("PNG chunk header cut short")
        length, kind = struct.unpack_from(">I4s", data, pos)
        if pos + 12 + length > size:
            raise _malformed("PNG chunk runs past the end of the file")
        if kind == b"acTL" and not seen_idat and length == 8:
            (frames,) = struct.unpack_from(">I", data, pos + 8)
            animated = frames > 1 or data[pos + 8] > 0  # OpenCV's test for several frames
        if kind == b"fcTL" and length >= 20:
            # OpenCV writes the first frame's region into the full image unchecked.
            w, h, x, y = struct.unpack_from(">IIII", data, pos + 12)
            if x + w > width or y + h > height:
                raise _malformed("PNG animation frame outside the image")
        seen_idat = seen_idat or kind == b"IDAT"
        pos += 12 + length
        if kind == b"IEND" and seen_idat:
            break
    return ImageHeader("png", width, height, bits=max(8, depth), animated=animated)


# --------------------------------------------------------------------------------------------
# TIFF: the first image file directory (the page OpenCV decodes), classic or BigTIFF.

# Integer field types: struct code and size. libtiff reads sizes from any of them.
_TIFF_INTEGERS = {
    1: ("B", 1), 3: ("H", 2), 4: ("I", 4), 6: ("b", 1), 8: ("h", 2), 9: ("i", 4),
    13: ("I", 4), 16: ("Q", 8), 17: ("q", 8), 18: ("Q", 8),
}  # fmt: skip
# libtiff refuses directories with more entries ("Sanity check on directory count failed").
_TIFF_MAX_ENTRIES = 4096
_WIDTH, _LENGTH, _BITS, _PHOTOMETRIC, _TILE_WIDTH, _TILE_LENGTH = 256, 257, 258, 262, 322, 323
# LogLuv images decode to 32-bit float whatever their declared sample size.
_LOGLUV = (32844, 32845)


def _tiff(data: bytes) -> ImageHeader:
    order = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")
    offset = order + ("Q" if big else "I")
    if big:
        offset_size, zero, ifd = _unpack(order + "HHQ", data, 4, "TIFF header cut short")
        if offset_size != 8 or zero != 0:
            raise _malformed("BigTIFF header")
        (count,) = _unpack(offset, data, ifd, "TIFF header cut short")
        first, entry, value_size = ifd + 8, 20, 8
    else:
        (ifd,) = _unpack(offset, data, 4, "TIFF header cut short")
        (count,) = _unpack(order + "H", data, ifd, "TIFF header cut short")
        first, entry, value_size = ifd + 2, 12, 4
    if not 0 < count <= _TIFF_MAX_ENTRIES or first + count * entry > len(data):
        raise _malformed("TIFF directory runs past the end of the file")
    tags: dict[int, list[int]] = {}
    for i in range(count):
        at = first + i * entry
        tag, kind = struct.unpack_from(order + "HH", data, at)
        if tag not in (_WIDTH, _LENGTH, _BITS, _PHOTOMETRIC, _TILE_WIDTH, _TILE_LENGTH):
            continue
        (n,) = struct.unpack_from(offset, data, at + 4)
        if kind not in _TIFF_INTEGERS or n == 0:
            raise _malformed(f"TIFF tag {tag} of type {kind}")
        code, item = _TIFF_INTEGERS[kind]
        where = at + 4 + value_size
        if n * item > value_size:  # the values are elsewhere, at this offset
            (where,) = struct.unpack_from(offset, data, where)
        n = min(n, 4)  # BitsPerSample has one value per sample, and a pixel at most 4
        past = f"TIFF tag {tag} points past the end of the file"
        values = _unpack(f"{order}{n}{code}", data, where, past)
        if min(values) < 0:
            raise _malformed(f"TIFF tag {tag} is negative")
        # Duplicate tags: take the largest, so the decoder can never see a bigger one.
        tags[tag] = [max(values), *tags.get(tag, [])]
    if _WIDTH not in tags or _LENGTH not in tags:
        raise _malformed("TIFF without an image width and length")
    width, height = max(tags[_WIDTH]), max(tags[_LENGTH])
    if width > 0xFFFFFFFF or height > 0xFFFFFFFF:
        raise _malformed(f"TIFF header declares a {width}x{height} image")
    _positive("TIFF", width, height)
    bits = max(tags.get(_BITS, [1]))
    if set(tags.get(_PHOTOMETRIC, [])) & set(_LOGLUV):
        bits = max(bits, 32)
    tile_width, tile_height = max(tags.get(_TILE_WIDTH, [0])), max(tags.get(_TILE_LENGTH, [0]))
    if bool(tile_width) != bool(tile_height):
        raise _malformed("TIFF tile width without a tile length")
    return ImageHeader("tiff", width, height, max(8, bits), False, tile_width, tile_height)


# --------------------------------------------------------------------------------------------
# BMP: the file header, then the DIB header's size.


def _bmp(data: bytes) -> ImageHeader:
    if len(data) < 26:
        raise _malformed("BMP header cut short")
    (header_size,) = struct.unpack_from("<I", data, 14)
    if header_size == 12:  # BITMAPCOREHEADER: unsigned 16-bit sides
        width, height = struct.unpack_from("<HH", data, 18)
    elif header_size >= 16:  # every later header: signed 32-bit, negative height is top-down
        width, height = struct.unpack_from("<ii", data, 18)
        height = abs(height)
    else:
        raise _malformed(f"BMP header of {header_size} bytes")
    _positive("BMP", width, height)
    return ImageHeader("bmp", width, height)  # OpenCV decodes every BMP to 8 bits
