"""Peak memory of decoding one image: our budgeted decode against a plain ``cv2.imdecode``.

Crafted files whose headers declare far more pixels than they hold (a JPEG with its frame header
patched, deflate bombs of zero rows), the largest images the default 50 megapixel budget lets
through (at their most expensive: progressive JPEGs without chroma subsampling, a 16-bit PNG,
a single-strip TIFF), and a real-sized photograph. Each file is decoded in a fresh process,
three ways:

- peer: ``cv2.imdecode(IMREAD_COLOR | IMREAD_ANYDEPTH)`` on the whole file, no budget;
- ours, full scale: ``fundus.read`` + ``fundus.decode`` with the default budget;
- ours at 512 px: the same with the builder's ``min_side`` for ``--image_size=512``, so large
  JPEGs decode at a reduced scale.

Peak memory is the process's VmHWM (peak resident set) less what it held before reading the
file (Python, NumPy, OpenCV). VmHWM rather than ``ru_maxrss``: the latter keeps the parent's
peak across the fork and exec that start the child.

    python benchmarks/decode_memory.py

The last line is ``ratio=<worst peer peak / worst ours peak> ...``.
"""

import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def patched_jpeg(width: int, height: int, progressive: bool = False) -> bytes:
    """A small real JPEG whose frame header is patched to declare ``width`` x ``height``.

    libjpeg decodes the few blocks there are and pads the rest with grey, after allocating the
    whole declared image (about 2.4 KB of file).
    """
    rng = np.random.default_rng(0)
    tile = rng.integers(0, 255, (64, 64, 3), np.uint8)
    flags = [cv2.IMWRITE_JPEG_QUALITY, 90, cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)]
    data = bytearray(cv2.imencode(".jpg", tile, flags)[1].tobytes())
    pos = 2
    while data[pos + 1] not in SOF_MARKERS:
        pos += 2 + struct.unpack_from(">H", data, pos + 2)[0]
    struct.pack_into(">HH", data, pos + 5, height, width)
    return bytes(data)


def _chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def zeros_png(width: int, height: int, depth: int = 8, colour: int = 0, rows=None) -> bytes:
    """A PNG of zero pixels: ``rows`` rows of image data (all by default), deflated.

    Zeros deflate about 1000:1, so a 24000 x 24000 greyscale image takes 560 KB; with
    ``rows=1`` the file is a few hundred bytes and declares whatever size it likes.
    """
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
    row = bytes(1 + (width * channels * depth + 7) // 8)  # filter byte 0, then the pixels
    packer = zlib.compressobj(9)
    parts = [packer.compress(row) for _ in range(height if rows is None else rows)]
    idat = b"".join(parts) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def photograph(width: int, height: int) -> np.ndarray:
    """A synthetic fundus photograph (BGR), the disc as tall as the image."""
    from effdr_tf.data import synthetic

    image, _ = synthetic.generate(2, 0, seed=1, size=1411)
    image = cv2.resize(image, (height, height), interpolation=cv2.INTER_CUBIC)
    side = (width - height) // 2
    image = cv2.copyMakeBorder(image, 0, 0, side, width - height - side, cv2.BORDER_CONSTANT)
    return np.ascontiguousarray(image[..., ::-1])


def cmyk_progressive_jpeg(image: np.ndarray) -> bytes:
    """The most expensive JPEG to decode per pixel: four components at full resolution, whose
    DCT coefficients libjpeg keeps for the whole image (2 bytes each) in progressive mode."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).convert("CMYK").save(buf, "JPEG", progressive=True, subsampling=0)
    return buf.getvalue()


def make_files(folder: str) -> list[tuple[str, str]]:
    """(label, path) of every file measured."""
    flat = np.full((7000, 7000, 3), 90, np.uint8)
    files = {
        "JPEG header 20000x20000": patched_jpeg(20000, 20000),
        "JPEG header 60000x60000": patched_jpeg(60000, 60000),
        "PNG header 60000x60000": zeros_png(60000, 60000, rows=1),
        "PNG bomb 24000x24000 grey": zeros_png(24000, 24000),
        "PNG bomb 12000x12000 grey 16-bit": zeros_png(12000, 12000, depth=16),
        "limit: JPEG 7000x7000 progressive 4:4:4": cv2.imencode(
            ".jpg",
            flat,
            [
                cv2.IMWRITE_JPEG_PROGRESSIVE,
                1,
                cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444,
            ],
        )[1].tobytes(),
        "limit: JPEG 7000x7000 CMYK progressive 4:4:4": cmyk_progressive_jpeg(flat),
        "limit: PNG 5000x5000 RGB 16-bit": zeros_png(5000, 5000, depth=16, colour=2),
        "limit: TIFF 7000x7000 one strip": cv2.imencode(".tif", flat)[1].tobytes(),
        "photograph: JPEG 5000x4000 q95": cv2.imencode(
            ".jpg", photograph(5000, 4000), [cv2.IMWRITE_JPEG_QUALITY, 95]
        )[1].tobytes(),
    }
    out = []
    for i, (label, data) in enumerate(files.items()):
        path = os.path.join(folder, f"{i:02d}.img")
        with open(path, "wb") as f:
            f.write(data)
        out.append((label, path))
    return out


def _vm_hwm_mb() -> float:
    with open("/proc/self/status") as f:
        return int(next(x for x in f if x.startswith("VmHWM:")).split()[1]) / 1024


def _measure(mode: str, path: str) -> None:
    """Decodes ``path`` one way in this (fresh) process; prints what it cost as JSON."""
    from effdr_tf.data import fundus

    before = _vm_hwm_mb()
    try:
        if mode == "peer":
            with open(path, "rb") as f:
                data = f.read()
            flags = cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH
            image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
            outcome = "not decoded" if image is None else f"{image.shape[1]}x{image.shape[0]}"
        else:
            min_side = None if mode == "full" else int(1.25 * 512)  # builder.DECODE_MARGIN
            image = fundus.decode(fundus.read(path), min_side=min_side)
            outcome = f"{image.shape[1]}x{image.shape[0]}"
    except fundus.RejectedImageError as e:
        outcome, reason = "rejected", str(e)
    except cv2.error as e:
        outcome, reason = "cv2.error", " ".join(str(e).split(" error: ")[-1].split())
    else:
        reason = ""
    peak = _vm_hwm_mb() - before
    print(json.dumps({"outcome": outcome, "reason": reason, "peak_mb": peak, "base_mb": before}))


def run(mode: str, path: str) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--measure", mode, path],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    print(f"OpenCV {cv2.__version__}; peak above the process's own, in MB")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for label, path in make_files(folder):
            size = os.path.getsize(path)
            got = {mode: run(mode, path) for mode in ("peer", "full", "512")}
            rows.append((label, size, got))
    base = rows[0][2]["peer"]["base_mb"]
    print(f"(each process holds {base:.0f} MB before reading the file)\n")
    print("| file | size | peer: plain imdecode | ours, full scale | ours at 512 px | peer/ours |")
    print("|---|---|---|---|---|---|")
    for label, size, got in rows:
        cells = [f"{got[m]['peak_mb']:.0f} ({got[m]['outcome']})" for m in got]
        ratio = got["peer"]["peak_mb"] / max(got["full"]["peak_mb"], 1.0)
        size_text = f"{size / 1e3:.1f} KB" if size < 1e6 else f"{size / 1e6:.1f} MB"
        print(f"| {label} | {size_text} | {' | '.join(cells)} | {ratio:.1f} |")
    print("\nReasons:")
    for label, _, got in rows:
        for mode in got:
            if got[mode]["reason"]:
                print(f"- {label}, {mode}: {got[mode]['reason']}")
    worst_peer = max(got["peer"]["peak_mb"] for _, _, got in rows)
    worst_ours = max(got["full"]["peak_mb"] for _, _, got in rows)
    print(
        f"\nratio={worst_peer / worst_ours:.2f} worst peak decode memory over these files, "
        f"plain cv2.imdecode ({worst_peer:.0f} MB) over ours at full scale ({worst_ours:.0f} MB)"
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--measure"]:
        _measure(sys.argv[2], sys.argv[3])
    else:
        main()
