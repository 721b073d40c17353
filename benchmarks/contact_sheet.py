"""Contact sheet of the ``varied`` synthetic preset: one row per camera site, one column per
grade, and a last column with one of the site's ungradable photographs.

    python -m benchmarks.contact_sheet [--output=docs/synthetic_varied.png] [--seed=0]
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np

from effdr_tf import fileio
from effdr_tf.data import synthetic_sites

CELL_HEIGHT = 116
LABEL_WIDTH = 120
HEADER = 28


def _cell(image: np.ndarray, width: int) -> np.ndarray:
    h, w = image.shape[:2]
    scale = min(CELL_HEIGHT / h, width / w)
    small = cv2.resize(image, (int(w * scale), int(h * scale)), interpolation=cv2.INTER_AREA)
    cell = np.full((CELL_HEIGHT, width, 3), 255, np.uint8)
    y, x = (CELL_HEIGHT - small.shape[0]) // 2, (width - small.shape[1]) // 2
    cell[y : y + small.shape[0], x : x + small.shape[1]] = small
    return cell


def _text(canvas, text, x, y, scale=0.5):
    cv2.putText(canvas, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)


def contact_sheet(seed: int = 0, size: int = 384) -> np.ndarray:
    """RGB uint8 grid: sites down, grades 0-4 and one ungradable photograph across."""
    columns = [f"grade {g}" for g in range(5)] + ["ungradable"]
    width = int(CELL_HEIGHT * 1.5)
    sheet = np.full(
        (HEADER + CELL_HEIGHT * len(synthetic_sites.SITES), LABEL_WIDTH + width * len(columns), 3),
        255,
        np.uint8,
    )
    for c, title in enumerate(columns):
        _text(sheet, title, LABEL_WIDTH + c * width + 8, 20)
    for r, profile in enumerate(synthetic_sites.SITES):
        y = HEADER + r * CELL_HEIGHT
        w, h = profile.resolution
        _text(sheet, f"site {profile.name}", 8, y + 50)
        _text(sheet, f"{w}x{h} q{profile.jpeg_quality}", 8, y + 70, 0.35)
        _text(sheet, f"last: {synthetic_sites.UNGRADABLE_KINDS[r]}", 8, y + 88, 0.35)
        for c in range(len(columns)):
            grade = min(c, 4)
            index = 100 * r + c
            kind = synthetic_sites.UNGRADABLE_KINDS[r] if c == 5 else ""
            image, _ = synthetic_sites.generate(
                grade,
                grade + 0.6,
                index,
                patient=index,
                seed=seed,
                size=size,
                eye="right" if c % 2 == 0 else "left",
                site_name=profile.name,
                ungradable=kind,
                max_side=int(1.5 * size),
            )
            cell = _cell(image, width - 4)
            x = LABEL_WIDTH + c * width + 2
            sheet[y : y + CELL_HEIGHT, x : x + width - 4] = cell
    return sheet


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="docs/synthetic_varied.png")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    # Six bits per channel: invisible at this size, and it keeps the PNG small.
    sheet = contact_sheet(args.seed) & 0xFC
    ok, encoded = cv2.imencode(".png", sheet[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise SystemExit("could not encode the contact sheet")
    fileio.write_atomic(args.output, encoded.tobytes())
    print(f"{args.output}: {sheet.shape[1]}x{sheet.shape[0]}, {len(encoded) // 1024} KB")


if __name__ == "__main__":
    main()
