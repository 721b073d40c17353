"""Grades for new photographs (a folder or a CSV of paths) with a trained run.

Each image goes through the builder's fundus preprocessing (decode, disc crop or Ben Graham, at
the model's input size, with the mode the training shards were built with) and is then encoded
and read by the evaluation pipeline's own ``eval_example``, so a photograph is seen exactly as
a shard image is. Unreadable or rejected images get a row with the reason; the rest are graded.
"""

from __future__ import annotations

import csv
import io
import json
import os

import numpy as np
import tensorflow as tf

from effdr_tf import fileio
from effdr_tf.data import fundus
from effdr_tf.data.builder import DECODE_MARGIN
from effdr_tf.data.sources import base as sources_base
from effdr_tf.errors import EffdrError
from effdr_tf.evaluation import clinical, evaluate, scoring, thresholds
from effdr_tf.evaluation import gradcam as gradcam_lib
from effdr_tf.pipeline import input as pipeline

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
PATH_COLUMNS = ("path", "image", "file", "filename")


def _is_image_name(path: str) -> bool:
    return path.lower().endswith(IMAGE_SUFFIXES)


def list_images(images: str) -> list[str]:
    """Paths to grade from a folder or a CSV with a path column (relative paths are taken from
    the CSV's folder).

    A folder is walked recursively and sorted, linked folders followed once each (a loop ends),
    and every file is listed, not only image names: a file that is not graded gets its row and
    reason, so predictions.csv accounts for the whole folder.
    """
    if os.path.isdir(images):
        found, seen = [], set()
        for root, dirs, files in os.walk(images, followlinks=True):
            real = os.path.realpath(root)
            if real in seen:
                dirs[:] = []
                continue
            seen.add(real)
            found += [os.path.join(root, f) for f in files]
        if not any(_is_image_name(p) for p in found):
            raise EffdrError(f"{images}: no images ({', '.join(IMAGE_SUFFIXES)}) in the folder")
        return sorted(found)
    if not os.path.isfile(images):
        raise EffdrError(f"{images}: no such folder or CSV file")
    # The builder's reader: a byte-order mark, CRLF, duplicate columns and bad bytes are
    # handled the same way for a label file and for a list of photographs.
    header, rows = sources_base.read_table(images)
    columns = [c.lower() for c in header]
    column = next((c for c in PATH_COLUMNS if c in columns), None)
    if column is None:
        raise EffdrError(f"{images}: needs a column named one of {', '.join(PATH_COLUMNS)}")
    original = header[columns.index(column)]
    folder = os.path.dirname(os.path.abspath(images))
    return [os.path.join(folder, row[original]) for row in rows if row[original]]


def _preprocessing(run: scoring.Run) -> dict:
    """How the run's training shards were made (their manifest), else the builder defaults."""
    data_dir = run.config.data.get("data_dir", "")
    path = os.path.join(data_dir, pipeline.MANIFEST) if data_dir else ""
    if path and tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as f:
            return json.load(f)["preprocessing"]
    return {"mode": "crop", "image_format": "jpeg", "jpeg_quality": 95}


def _display(model_input: np.ndarray) -> np.ndarray:
    """The model input as a viewable RGB image: pixels 0..255 unless the data were normalised
    outside the model, in which case they are stretched back to 0..255."""
    low, high = float(model_input.min()), float(model_input.max())
    if low >= 0.0 and high <= 255.0 and high > 1.5:
        return model_input
    return (model_input - low) / max(high - low, 1e-6) * 255.0


def predict_images(
    model_dir: str,
    images: str,
    out_dir: str,
    *,
    batch_size: int = 16,
    gradcam: bool = False,
    max_pixels: float | None = fundus.DEFAULT_MAX_PIXELS,
    grading: str | None = None,
) -> dict:
    """Writes ``out_dir/predictions.csv`` (and with ``gradcam`` one heatmap overlay PNG per
    graded image in ``out_dir/gradcam/``); returns counts of graded and unreadable images.

    ``grade`` is the argmax; ``grade_fitted`` reads the expected grade at the cut points that
    eval.py fitted on validation (``grading``: its ``grading.json``; default the one of the
    run's evaluation on its own data, ``MODEL_DIR/eval_<data folder>/grading.json``), empty when
    there is none.

    Whatever goes wrong with one file (unreadable, over ``max_pixels`` as its header declares,
    a decoder error, out of memory) becomes that file's row, with the reason in its ``error``
    column; the other files are graded.
    """
    run = scoring.load_run(model_dir)
    cuts, grading = _cut_points(run, grading)
    paths = list_images(images)
    prep = _preprocessing(run)
    size = run.image_size

    @tf.function(reduce_retracing=True)
    def prepare(encoded):
        return scoring.images_from_bytes(run, encoded)

    @tf.function(reduce_retracing=True)
    def forward(batch):
        return run.probabilities(batch)

    tf.io.gfile.makedirs(os.path.join(out_dir, "gradcam") if gradcam else out_dir)
    rows: list[dict] = []
    pending: list[tuple[int, bytes]] = []

    def flush():
        if not pending:
            return
        batch = prepare(tf.constant([data for _, data in pending]))
        probs = forward(batch).numpy()
        heat = gradcam_lib.heatmaps(run.model, batch, head=run.head) if gradcam else None
        for i, ((index, _), p) in enumerate(zip(pending, probs, strict=True)):
            rows[index].update(probabilities=p)
            if heat is not None:
                stem = os.path.splitext(os.path.basename(rows[index]["path"]))[0]
                name = os.path.join(out_dir, "gradcam", f"{index:05d}_{stem}.png")
                fileio.write_atomic(
                    name, gradcam_lib.overlay_png(_display(batch[i].numpy()), heat[i])
                )
                rows[index]["gradcam"] = name
        pending.clear()

    for path in paths:
        row = {"path": path, "error": ""}
        rows.append(row)
        if not _is_image_name(path):
            row["error"] = f"not an image file name (expected {', '.join(IMAGE_SUFFIXES)})"
            continue
        try:
            data = fundus.read(path, max_pixels)
            image = fundus.decode(data, int(DECODE_MARGIN * size), max_pixels)
            image = fundus.preprocess(image, prep.get("mode", "crop"), size)
            data = fundus.encode(image, prep.get("image_format") or "jpeg",
                                 prep.get("jpeg_quality") or 95)  # fmt: skip
        except Exception as e:  # noqa: BLE001 - one bad photograph must not stop the others
            row["error"] = fundus.describe_failure(e)
            continue
        pending.append((len(rows) - 1, data))
        if len(pending) == batch_size:
            flush()
    flush()

    k = run.num_classes
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "grade", "grade_fitted", "referable", "referable_score"]
                    + [f"p{c}" for c in range(k)] + ["error"])  # fmt: skip
    graded = 0
    for row in rows:
        p = row.get("probabilities")
        if p is None:
            writer.writerow([row["path"], "", "", "", ""] + [""] * k + [row["error"]])
            continue
        graded += 1
        score = float(clinical.referable_score(p[np.newaxis])[0]) if k > 2 else float("nan")
        fitted = (
            int(thresholds.apply(thresholds.expected_grade(p[np.newaxis]), cuts)[0])
            if cuts is not None
            else ""
        )
        writer.writerow(
            [row["path"], int(p.argmax()), fitted, int(p.argmax() >= clinical.REFERABLE_GRADE),
             f"{score:.6f}"] + [f"{v:.6f}" for v in p] + [""]
        )  # fmt: skip
    target = os.path.join(out_dir, "predictions.csv")
    fileio.write_atomic(target, buf.getvalue())
    return {
        "graded": graded,
        "unreadable": len(rows) - graded,
        "csv": target,
        "rows": rows,
        "cut_points": None if cuts is None else cuts.tolist(),
        "grading": grading,
    }


def _cut_points(run: scoring.Run, grading: str | None) -> tuple[np.ndarray | None, str | None]:
    """Cut points from eval.py's grading.json; an explicit path must exist and match."""
    if grading is None:
        data = os.path.basename(os.path.normpath(run.config.data.data_dir or ""))
        grading = os.path.join(run.model_dir, f"eval_{data}", evaluate.GRADING_FILE)
        if not data or not tf.io.gfile.exists(grading):
            return None, None
    try:
        with tf.io.gfile.GFile(grading) as f:
            cuts = json.load(f)["cut_points"]
    except (tf.errors.OpError, OSError, ValueError, KeyError, TypeError) as e:
        raise EffdrError(f"{grading}: not a grading.json written by eval.py ({e})") from e
    if cuts is None or len(cuts) != run.num_classes - 1:
        raise EffdrError(
            f"{grading}: {0 if cuts is None else len(cuts)} cut points for a model of "
            f"{run.num_classes} grades"
        )
    return np.asarray(cuts, np.float64), grading
