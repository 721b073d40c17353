"""A folder of the files screening programmes really send, and some crafted ones.

``make_corpus(root)`` writes it as a grade-folder dataset (``root/<grade>/...``) and returns,
per file, whether a grader should produce a grade for it. Everything here is made from a
synthetic fundus photograph or from bytes: nothing is downloaded.
"""

from __future__ import annotations

import os
import pathlib
import struct
import zlib

import cv2
import numpy as np
from PIL import Image

from effdr_tf.data import synthetic


def _fundus(grade: int, seed: int, size: int = 160) -> np.ndarray:
    image, _ = synthetic.generate(grade, seed, seed=9, size=size)
    return image


def _jpeg(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header (SOF0) is patched to declare width x height."""
    data = bytearray(_jpeg(_fundus(1, 1, size=64)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_declaring(width: int, height: int, *, bit_depth: int = 8, colour: int = 0,
                  rows: int = 1) -> bytes:  # fmt: skip
    """A valid PNG header declaring width x height, with the first ``rows`` rows of zeros
    deflated (every row, for a decompression bomb: a few hundred KB that inflate to GBs)."""
    channels = {0: 1, 2: 3}[colour]
    row = b"\x00" + bytes(width * channels * bit_depth // 8)
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row * min(256, rows - i)) for i in range(0, rows, 256))
    body += packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")
    )


def tiff_declaring(width: int, height: int) -> bytes:
    """A little-endian baseline TIFF header declaring an 8-bit grey width x height image."""
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1),
               (262, 3, 1, 1), (273, 4, 1, 8), (277, 3, 1, 1), (278, 4, 1, height),
               (279, 4, 1, width * height)]  # fmt: skip
    ifd = struct.pack("<H", len(entries))
    ifd += b"".join(struct.pack("<HHII", *e) for e in entries) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + bytes(64)


def bmp_declaring(width: int, height: int) -> bytes:
    """A BMP header (BITMAPINFOHEADER, 24 bits) declaring width x height, and 64 data bytes."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + 64, 0, 0, 54) + info + bytes(64)


def make_corpus(root: pathlib.Path, outside: pathlib.Path) -> dict[str, bool]:
    """Writes the corpus under ``root`` (grades 0-4 as folders) and a file outside it.

    Returns:
        Path relative to ``root`` -> True for a photograph that should be graded.
    """
    expected: dict[str, bool] = {}

    def put(relative: str, data: bytes, good: bool = False) -> None:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        expected[relative] = good

    # Photographs that must be graded, whatever their names and encodings.
    put("0/plain.jpg", _jpeg(_fundus(0, 1)), good=True)
    put("1/spaces in the name.jpeg", _jpeg(_fundus(1, 2)), good=True)
    put("2/ünïcødé-名前.JPG", _jpeg(_fundus(2, 3)), good=True)
    put("3/-leading-dash.png", cv2.imencode(".png", _fundus(3, 4)[..., ::-1])[1].tobytes(), True)
    put('4/comma,and"quote.jpg', _jpeg(_fundus(4, 5)), good=True)
    put("0/new\nline.jpg", _jpeg(_fundus(0, 6)), good=True)
    put("1/" + "long" * 60 + ".jpg", _jpeg(_fundus(1, 7)), good=True)
    photo = _fundus(2, 8)
    cmyk = root / "2" / "cmyk.jpg"
    cmyk.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(photo).convert("CMYK").save(cmyk, "JPEG")
    expected["2/cmyk.jpg"] = True
    sixteen = cv2.imencode(".png", photo[..., ::-1].astype(np.uint16) * 257)[1].tobytes()
    put("3/sixteen-bit.png", sixteen, good=True)
    put("4/photo.tif", cv2.imencode(".tif", photo[..., ::-1])[1].tobytes(), good=True)
    put("0/photo.bmp", cv2.imencode(".bmp", photo[..., ::-1])[1].tobytes(), good=True)
    # A large but real photograph (24 megapixels, under the default budget).
    big = cv2.resize(_fundus(1, 9, size=400), (6000, 4000), interpolation=cv2.INTER_LINEAR)
    put("1/large-24mp.jpg", _jpeg(big), good=True)

    # Crafted headers: a few KB declaring gigapixels, and decompression bombs.
    put("2/jpeg-60000x60000.jpg", jpeg_declaring(60000, 60000))
    put("3/jpeg-20000x20000.jpg", jpeg_declaring(20000, 20000))
    put("4/png-60000x60000.png", png_declaring(60000, 60000))
    put("0/png-bomb-24000x24000.png", png_declaring(24000, 24000, rows=24000))
    put("1/png16-12000x12000.png", png_declaring(12000, 12000, bit_depth=16, rows=12000))
    put("2/tiff-60000x60000.tif", tiff_declaring(60000, 60000))
    put("3/bmp-60000x60000.bmp", bmp_declaring(60000, 60000))

    # Broken files.
    good = _jpeg(_fundus(4, 10))
    put("4/truncated.jpg", good[: len(good) // 2])
    put("0/empty.jpg", b"")
    put("1/text.jpg", b"this is not a photograph\n")
    put("2/random-bytes.png", np.random.default_rng(0).bytes(3 << 20))
    put("3/black.jpg", _jpeg(np.zeros((160, 160, 3), np.uint8)))
    gif = root / "4" / "animation.png"
    Image.fromarray(photo).save(gif, "GIF")
    expected["4/animation.png"] = False

    # Not photographs at all, and files outside the grade folders.
    put("0/.DS_Store", b"\x00\x00\x00\x01Bud1")
    put("notes.txt", b"exported from the camera on Monday\n")
    put("7/wrong-grade.jpg", _jpeg(_fundus(0, 11)))
    (root / "2" / "folder.jpg").mkdir(parents=True)

    # Links: out of the folder, to a system file, dangling; and a named pipe (a reader that
    # opens it would wait for a writer for ever).
    outside.write_bytes(_jpeg(_fundus(3, 12)))
    for relative, target in [("3/outside.jpg", outside), ("4/passwd.jpg", "/etc/passwd"),
                             ("0/dangling.jpg", root / "no-such-file.jpg")]:  # fmt: skip
        os.symlink(target, root / relative)
        expected[relative] = False
    os.mkfifo(root / "1" / "pipe.jpg")
    expected["1/pipe.jpg"] = False
    return expected
