"""Grades for new photographs (a folder, a CSV of paths or a glob pattern) with a trained run.

Each image goes through the builder's fundus preprocessing (decode, disc crop or Ben Graham, at
the model's input size, with the mode the training shards were built with) and is then encoded
and read by the evaluation pipeline's own ``eval_example``, so a photograph is seen exactly as
a shard image is. Unreadable or rejected images get a row with the reason; the rest are graded.

Decisions come from what eval.py fitted on validation (``grading.json``): ``referable`` is an
operating point on the referable score (or the grade at the fitted cut points), named with its
threshold in each row, and a grading.json fitted on another head, an ensemble or other
test-time views is refused rather than applied to outputs it does not describe.

The steps a photograph goes through (``grading_settings``, ``prepare_photograph``,
``grading_functions``, ``graded_row``/``error_row``) are shared with batch grading on Apache
Beam (``beam_grading``), so both give a photograph the same row.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import sys
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from effdr_tf import fileio
from effdr_tf.data import fundus, image_header
from effdr_tf.data.builder import DECODE_MARGIN
from effdr_tf.data.sources import base as sources_base
from effdr_tf.errors import EffdrError
from effdr_tf.evaluation import clinical, evaluate, scoring, thresholds
from effdr_tf.evaluation import gradcam as gradcam_lib
from effdr_tf.pipeline import input as pipeline

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
PATH_COLUMNS = ("path", "image", "file", "filename")
# --images is a glob pattern when it has one of these (and names no existing folder or file).
GLOB_CHARACTERS = "*?["
NOT_AN_IMAGE_NAME = f"not an image file name (expected {', '.join(IMAGE_SUFFIXES)})"


def _is_image_name(path: str) -> bool:
    return path.lower().endswith(IMAGE_SUFFIXES)


def _is_pattern(images: str) -> bool:
    return any(c in images for c in GLOB_CHARACTERS)


def _glob(pattern: str) -> list[str]:
    """The files ``pattern`` matches, sorted; ``tf.io.gfile.glob``, so a ``gs://`` pattern is
    listed as a local one is. Matched folders are left out (their files need their own ``*``)."""
    try:
        found = tf.io.gfile.glob(pattern)
    except tf.errors.OpError as e:
        raise EffdrError(f"{pattern}: cannot list the pattern ({e.message})") from e
    if fileio.is_remote(pattern):
        # A folder of an object store is a name prefix, listed with a trailing slash if at all;
        # asking for each match whether it is one would cost a request per photograph.
        files = [p for p in found if not p.endswith("/")]
    else:
        files = [p for p in found if not os.path.isdir(p)]
    if not files:
        raise EffdrError(f"{pattern}: the pattern matches no file")
    if not any(_is_image_name(p) for p in files):
        raise EffdrError(f"{pattern}: no images ({', '.join(IMAGE_SUFFIXES)}) among the matches")
    return sorted(files)


def list_images(images: str) -> list[str]:
    """Paths to grade from a folder, a CSV with a path column (relative paths are taken from
    the CSV's folder) or a glob pattern.

    A folder is walked recursively and sorted, linked folders followed once each (a loop ends),
    and every file is listed, not only image names: a file that is not graded gets its row and
    reason, so predictions.csv accounts for the whole folder. A pattern (with ``*``, ``?`` or
    ``[``, and not an existing folder or file) lists the files it matches, sorted, local or on
    any file system ``tf.io.gfile`` reads (``gs://BUCKET/photos/*.jpeg``); non-image names it
    matches get their row too.
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
    if not os.path.isfile(images) and _is_pattern(images):
        return _glob(images)
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


REFERABLE_RULES = ("high_sensitivity", "high_specificity", "grade_fitted", "argmax")
PARTIAL_SUFFIX = ".partial"
# Overlays are drawn on the preprocessed photograph at this side (at least twice the model's
# input), not on the model's input: lesions a few pixels wide at 224 px stay visible.
OVERLAY_SIDE = 768
# Grad-CAM holds the activations after the explained layer for the backward pass: a smaller
# batch than plain grading keeps a B5 at 456 px within a few GB.
BATCH_SIZE = 16
GRADCAM_BATCH_SIZE = 4
SCALE_IMAGES = 32


def load_grading(path: str) -> dict:
    """A grading.json written by eval.py, as a dict; one error line when it is not one."""
    try:
        with tf.io.gfile.GFile(path) as f:
            grading = json.load(f)
        if not isinstance(grading, dict):
            raise TypeError("not a JSON object")
    except (tf.errors.OpError, OSError, ValueError, TypeError) as e:
        raise EffdrError(f"{path}: not a grading.json written by eval.py ({e})") from e
    return grading


def check_grading(grading: dict, path: str, run: scoring.Run, tta: str | None, rotations):
    """The TTA to grade with, after checking that ``grading`` was fitted on this run's kind of
    outputs: the same head, one run (not an ensemble's average), and the same test-time views.

    Args:
        grading: a grading.json's content (``load_grading``).
        path: its path, for the error line.
        run: the run that grades the photographs.
        tta: ``--tta`` when given, else None (take the grading.json's).
        rotations: ``--tta_rotations`` when given, else None.

    Returns:
        (tta, rotations) to apply.

    Raises:
        EffdrError: one line naming ``path`` and the mismatch.
    """
    heads = grading.get("head") or []
    heads = [heads] if isinstance(heads, str) else list(heads)
    runs = int(grading.get("runs") or len(heads) or 1)
    if runs != 1:
        raise EffdrError(
            f"{path}: fitted on an ensemble of {runs} runs' averaged probabilities; --images "
            f"grades with the one run {run.model_dir}, whose outputs those cut points and "
            "operating points do not describe"
        )
    if heads and heads != [run.head]:
        raise EffdrError(
            f"{path}: fitted on a {'/'.join(heads)} head; {run.model_dir} has a {run.head} head"
        )
    mismatch = scoring.prior_mismatch(grading.get("prior_correction"), [run])
    if mismatch:
        raise EffdrError(f"{path}: {mismatch}")
    fitted_tta = grading.get("tta") or "none"
    fitted_rotations = [float(a) for a in grading.get("tta_rotations") or []]
    if tta is not None and tta != fitted_tta:
        raise EffdrError(
            f"{path}: fitted with --tta={fitted_tta}; grading with --tta={tta} would read "
            f"other probabilities (leave --tta out to apply {fitted_tta})"
        )
    if rotations is not None and [float(a) for a in rotations] != fitted_rotations:
        raise EffdrError(
            f"{path}: fitted with --tta_rotations={','.join(f'{a:g}' for a in fitted_rotations)}"
            f"; --tta_rotations={','.join(f'{float(a):g}' for a in rotations)} differs (leave "
            "it out to apply the fitted views)"
        )
    return fitted_tta, fitted_rotations


def _cut_points(grading: dict | None, path: str | None, num_classes: int) -> np.ndarray | None:
    cuts = None if grading is None else grading.get("cut_points")
    if cuts is None:
        return None
    if not isinstance(cuts, list) or len(cuts) != num_classes - 1:
        count = len(cuts) if isinstance(cuts, list) else 0
        raise EffdrError(f"{path}: {count} cut points for a model of {num_classes} grades")
    return np.asarray(cuts, np.float64)


def referable_rule(grading: dict | None, path: str | None, rule: str, cuts) -> dict:
    """How the ``referable`` column is decided.

    Args:
        grading: the grading.json's content, or None.
        path: its path.
        rule: one of ``REFERABLE_RULES``: an operating point fitted on validation (a threshold
            on the referable score P(2)+P(3)+P(4)), the grade at the fitted cut points, or the
            argmax grade (which under-calls referable DR; only when asked for).
        cuts: the cut points, or None.

    Returns:
        {"rule": rule, "threshold": float or None, "available": bool, "why": the reason the
        column is empty when it is not available}.
    """
    if rule not in REFERABLE_RULES:
        raise EffdrError(f"--referable={rule}: choose one of {', '.join(REFERABLE_RULES)}")
    out = {"rule": rule, "threshold": None, "available": True, "why": ""}
    if rule == "argmax":
        return out
    if grading is None:
        out.update(available=False, why="no grading.json (pass --grading=FILE from eval.py)")
        return out
    if rule == "grade_fitted":
        if cuts is None:
            out.update(available=False, why=f"{path} has no cut points")
        return out
    points = grading.get("operating_points") or {}
    if points.get(rule) is None:
        out.update(available=False, why=f"{path} has no {rule} operating point")
        return out
    out["threshold"] = float(points[rule])
    return out


def _referable(p: np.ndarray, score: float, fitted, decision: dict):
    if not decision["available"]:
        return ""
    if decision["rule"] == "argmax":
        return int(p.argmax() >= clinical.REFERABLE_GRADE)
    if decision["rule"] == "grade_fitted":
        return int(fitted >= clinical.REFERABLE_GRADE)
    return int(score >= decision["threshold"])


def describe_rule(decision: dict) -> str:
    """The rule as the printed line and the CSV's ``referable_rule`` column name it."""
    if not decision["available"]:
        return f"none: {decision['why']}"
    if decision["threshold"] is not None:
        return f"{decision['rule']} operating point: referable score >= {decision['threshold']:.9g}"
    if decision["rule"] == "grade_fitted":
        return "grade_fitted >= 2 (cut points fitted on validation)"
    return "argmax grade >= 2 (not a validated operating point)"


def _default_grading(run: scoring.Run) -> str | None:
    data = os.path.basename(os.path.normpath(run.config.data.get("data_dir") or ""))
    path = os.path.join(run.model_dir, f"eval_{data}", evaluate.GRADING_FILE)
    return path if data and tf.io.gfile.exists(path) else None


@dataclasses.dataclass(frozen=True)
class Settings:
    """What turns a run's probabilities into a row: the checked grading.json and its rule.

    Attributes:
        grading: the grading.json applied, or None.
        tta: the test-time views (``scoring.TTA_MODES``).
        rotations: extra views, in degrees.
        num_classes: the run's grades.
        cuts: the fitted cut points, or None.
        decision: ``referable_rule``'s dict.
    """

    grading: str | None
    tta: str
    rotations: tuple[float, ...]
    num_classes: int
    cuts: np.ndarray | None
    decision: dict

    @property
    def rule(self) -> str:
        return describe_rule(self.decision)

    def describe(self) -> dict:
        """The settings as ``predict_images`` reports them (JSON-ready)."""
        return {
            "cut_points": None if self.cuts is None else self.cuts.tolist(),
            "grading": self.grading,
            "referable": self.decision | {"description": self.rule},
            "tta": self.tta,
            "tta_rotations": list(self.rotations),
        }


def grading_settings(
    run: scoring.Run, grading: str | None, referable: str, tta: str | None, rotations
) -> Settings:
    """Loads and checks the grading.json and fixes the rule every row is decided by.

    Args:
        run: the run that grades.
        grading: a grading.json; None takes the run's own evaluation's when there is one.
        referable: one of ``REFERABLE_RULES``.
        tta: ``--tta`` when given, else None (the grading.json's, or none).
        rotations: ``--tta_rotations`` when given, else None.

    Raises:
        EffdrError: a grading.json that cannot be read, does not describe this run's outputs
            (``check_grading``) or has cut points for another number of grades; an unknown
            rule or TTA.
    """
    grading = grading or _default_grading(run)
    content = load_grading(grading) if grading else None
    if content is not None:
        tta, rotations = check_grading(content, grading, run, tta, rotations)
    tta = tta or "none"
    if tta not in scoring.TTA_MODES:
        raise EffdrError(f"--tta={tta}: choose one of {', '.join(scoring.TTA_MODES)}")
    cuts = _cut_points(content, grading, run.num_classes)
    return Settings(
        grading=grading,
        tta=tta,
        rotations=tuple(float(a) for a in rotations or ()),
        num_classes=run.num_classes,
        cuts=cuts,
        decision=referable_rule(content, grading, referable, cuts),
    )


def grading_functions(run: scoring.Run, settings: Settings):
    """(prepare, forward): encoded images (string [N]) to the model's input, as the evaluation
    pipeline reads a shard image, and a batch of model inputs to probabilities [N, K] averaged
    over the settings' views; traced once per batch shape."""

    @tf.function(reduce_retracing=True)
    def prepare(encoded):
        return scoring.images_from_bytes(run, encoded)

    @tf.function(reduce_retracing=True)
    def forward(batch):
        return scoring.tta_probabilities(run.probabilities, batch, settings.tta, settings.rotations)

    return prepare, forward


@dataclasses.dataclass(frozen=True)
class Preparation:
    """How a photograph becomes a model input: as the run's training shards were built.

    Attributes:
        size: the model's input side, in pixels.
        mode: the fundus preprocessing (``fundus.PREPROCESS_MODES``).
        image_format: the encoding the shards hold (jpeg or png).
        jpeg_quality: its quality, for jpeg.
        max_pixels: the pixel budget a file's header may declare; None for none.
    """

    size: int
    mode: str = "crop"
    image_format: str = "jpeg"
    jpeg_quality: int = 95
    max_pixels: float | None = fundus.DEFAULT_MAX_PIXELS


def preparation(run: scoring.Run, max_pixels: float | None) -> Preparation:
    """The preparation for ``run``: its input size and its shards' preprocessing."""
    prep = _preprocessing(run)
    return Preparation(
        size=run.image_size,
        mode=prep.get("mode", "crop"),
        image_format=prep.get("image_format") or "jpeg",
        jpeg_quality=prep.get("jpeg_quality") or 95,
        max_pixels=max_pixels,
    )


def read_photograph(path: str, max_pixels: float | None) -> bytes:
    """A photograph's bytes: ``fundus.read`` for a local path; a remote one (``gs://``) through
    ``tf.io.gfile``, refused unread when it is larger than an image within ``max_pixels`` can
    be, as ``fundus.read`` refuses a local one."""
    if not fileio.is_remote(path):
        return fundus.read(path, max_pixels)
    limit = image_header.max_file_bytes(max_pixels)
    try:
        size = tf.io.gfile.stat(path).length
        if limit is not None and size > limit:
            raise fundus.RejectedImageError(
                f"file is {size / 1e6:.1f} MB, larger than an image within the "
                f"{max_pixels / 1e6:g} megapixel limit can be ({limit / 1e6:.1f} MB; "
                "--max_megapixels)"
            )
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    except tf.errors.NotFoundError as e:
        raise fundus.RejectedImageError("cannot read file: No such file or directory") from e
    except tf.errors.OpError as e:
        reason = " ".join(e.message.split()) or type(e).__name__
        raise fundus.RejectedImageError(f"cannot read file: {reason}") from e


class Prepared(NamedTuple):
    """A prepared photograph: the model input, encoded as in a shard, and with an overlay
    side the preprocessed photograph at that side (RGB uint8), else None."""

    encoded: bytes
    overlay: np.ndarray | None = None


def prepare_photograph(
    path: str, preparation: Preparation, overlay_side: int | None = None
) -> Prepared:
    """Reads one photograph within the pixel budget, decodes it and applies the shards'
    fundus preprocessing at the model's size, encoded as the shards are.

    Args:
        path: the photograph (local or remote).
        preparation: ``preparation(run, max_pixels)``.
        overlay_side: also the preprocessed photograph at this side (for Grad-CAM overlays).

    Raises:
        Exception: whatever stops this photograph (``fundus.describe_failure`` makes its
            row's reason): a name that is not an image's, an unreadable file, a header over
            the budget, a decoder error, a photograph no grader could use.
    """
    if not _is_image_name(path):
        raise fundus.RejectedImageError(NOT_AN_IMAGE_NAME)
    data = read_photograph(path, preparation.max_pixels)
    image = fundus.decode(data, int(DECODE_MARGIN * preparation.size), preparation.max_pixels)
    encoded = fundus.encode(
        fundus.preprocess(image, preparation.mode, preparation.size),
        preparation.image_format,
        preparation.jpeg_quality,
    )
    overlay = None
    if overlay_side:
        large = fundus.decode(data, int(DECODE_MARGIN * overlay_side), preparation.max_pixels)
        overlay = fundus.preprocess(large, preparation.mode, overlay_side)
    return Prepared(encoded, overlay)


def csv_header(num_classes: int) -> list[str]:
    """The columns of predictions.csv."""
    return (
        ["path", "grade", "grade_fitted", "referable", "referable_rule", "referable_score"]
        + [f"p{c}" for c in range(num_classes)]
        + ["error"]
    )


def error_row(path: str, error: str, num_classes: int) -> list:
    """The row of a photograph that was not graded: its path and the reason."""
    return [path, "", "", "", "", ""] + [""] * num_classes + [error]


def graded_row(path: str, probabilities: np.ndarray, settings: Settings) -> list:
    """The row of a graded photograph: argmax grade, the grade at the fitted cut points, the
    referable decision under the settings' rule (named in the row), the referable score and
    the probabilities, to 6 decimals."""
    p = np.asarray(probabilities)
    k = settings.num_classes
    score = float(clinical.referable_score(p[np.newaxis])[0]) if k > 2 else float("nan")
    cuts = settings.cuts
    fitted = (
        int(thresholds.apply(thresholds.expected_grade(p[np.newaxis]), cuts)[0])
        if cuts is not None
        else ""
    )
    decision = settings.decision
    return (
        [path, int(p.argmax()), fitted, _referable(p, score, fitted, decision),
         settings.rule if decision["available"] else "", f"{score:.6f}"]
        + [f"{v:.6f}" for v in p] + [""]
    )  # fmt: skip


def csv_line(row: list) -> str:
    """One row as predictions.csv holds it, without the line end (for line-based writers)."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(row)
    return buffer.getvalue()


def heat_scale(run: scoring.Run, method: str, stage: str) -> tuple[float | None, str]:
    """The one heat scale for every overlay of this run (``gradcam.fit_scale``), fixed on up to
    ``SCALE_IMAGES`` of its validation images; (scale, where it comes from), or (None, why not)
    when the run's data have no validation split."""
    data_dir = run.config.data.get("data_dir") or ""
    try:
        manifest = pipeline.load_manifest(data_dir) if data_dir else {}
    except (EffdrError, OSError, ValueError, tf.errors.OpError):
        manifest = {}
    if not (manifest.get("splits") or {}).get("validation", {}).get("count"):
        return None, "the run's data have no validation split"
    ds = pipeline.make_dataset(
        scoring.eval_config(run, data_dir), "validation", training=False,
        batch_size=GRADCAM_BATCH_SIZE,
    )  # fmt: skip
    maps, discs = [], []
    for images, _ in ds.take(-(-SCALE_IMAGES // GRADCAM_BATCH_SIZE)):
        maps.append(gradcam_lib.heatmaps(run.model, images, head=run.head, method=method,
                                         stage=stage))  # fmt: skip
        discs.append(gradcam_lib.disc(_display(images.numpy())))
    count = sum(len(m) for m in maps)
    scale = gradcam_lib.fit_scale(np.concatenate(maps), np.concatenate(discs))
    return scale, f"99th percentile of the heat on {count} validation images of {data_dir}"


def predict_images(
    model_dir: str,
    images: str,
    out_dir: str,
    *,
    batch_size: int | None = None,
    gradcam: bool = False,
    max_pixels: float | None = fundus.DEFAULT_MAX_PIXELS,
    grading: str | None = None,
    referable: str = "high_sensitivity",
    tta: str | None = None,
    rotations=None,
    method: str = "gradcam",
    stage: str = "stride16",
    prior_correction: bool = True,
) -> dict:
    """Writes ``out_dir/predictions.csv`` (and with ``gradcam`` one heatmap overlay PNG per
    graded image in ``out_dir/gradcam/``); returns counts of graded and unreadable images.

    ``grade`` is the argmax; ``grade_fitted`` reads the expected grade at the cut points that
    eval.py fitted on validation (``grading``: its ``grading.json``; default the one of the
    run's evaluation on its own data, ``MODEL_DIR/eval_<data folder>/grading.json``), empty when
    there is none. ``referable`` follows ``referable`` (``referable_rule``), named with its
    threshold in the ``referable_rule`` column; empty when the grading.json cannot give it.
    The grading.json must describe this run's outputs (``check_grading``); its test-time
    views are applied unless ``tta``/``rotations`` are given, which must then match.

    With ``gradcam``, the map is ``method`` (``gradcam.METHODS``) at ``stage``
    (``gradcam.STAGES``), on the heat scale ``heat_scale`` fixes, drawn on the preprocessed
    photograph at ``OVERLAY_SIDE`` px.

    Rows are written as their batch is graded to ``predictions.csv.partial``, renamed to
    ``predictions.csv`` at the end: a crash leaves the rows already graded readable there.

    Whatever goes wrong with one file (unreadable, over ``max_pixels`` as its header declares,
    a decoder error, out of memory) becomes that file's row, with the reason in its ``error``
    column; the other files are graded.

    ``prior_correction``: as for eval.py (``scoring.load_run``); must match the grading.json's.
    """
    run = scoring.load_run(model_dir, prior_correction=prior_correction)
    settings = grading_settings(run, grading, referable, tta, rotations)
    paths = list_images(images)
    prep = preparation(run, max_pixels)
    batch_size = batch_size or (GRADCAM_BATCH_SIZE if gradcam else BATCH_SIZE)
    overlay_side = min(max(2 * prep.size, OVERLAY_SIDE), 2048)
    scale, scale_from = (None, "")
    if gradcam:
        scale, scale_from = heat_scale(run, method, stage)
    prepare, forward = grading_functions(run, settings)

    tf.io.gfile.makedirs(os.path.join(out_dir, "gradcam") if gradcam else out_dir)
    k = run.num_classes
    target = os.path.join(out_dir, "predictions.csv")
    partial = target + PARTIAL_SUFFIX
    rows: list[dict] = []
    pending: list[tuple[int, bytes, np.ndarray | None]] = []
    state = {"written": 0, "graded": 0}
    # A predictions.csv of an earlier grading must not pass for this one's if this one stops.
    if tf.io.gfile.exists(target):
        tf.io.gfile.remove(target)
    # Opened here and closed on every way out below (a with-block would close it before the
    # rename or hide which rows were done when a batch fails).
    out = tf.io.gfile.GFile(partial, "w")
    writer = csv.writer(out)
    writer.writerow(csv_header(k))

    def write_done():
        for row in rows[state["written"] :]:
            p = row.get("probabilities")
            if p is None:
                writer.writerow(error_row(row["path"], row["error"], k))
                continue
            state["graded"] += 1
            writer.writerow(graded_row(row["path"], p, settings))
        state["written"] = len(rows)
        out.flush()

    def flush():
        nonlocal scale, scale_from
        if not pending:
            return
        batch = prepare(tf.constant([data for _, data, _ in pending]))
        probs = forward(batch).numpy()
        if gradcam:
            heat = gradcam_lib.heatmaps(run.model, batch, head=run.head, method=method,
                                        stage=stage)  # fmt: skip
            if scale is None:
                scale = gradcam_lib.fit_scale(heat, gradcam_lib.disc(_display(batch.numpy())))
                scale_from = (
                    f"99th percentile of the heat on the first {len(pending)} photographs "
                    "(the run's data have no validation split)"
                )
        for i, ((index, _, crop), p) in enumerate(zip(pending, probs, strict=True)):
            rows[index].update(probabilities=p)
            if gradcam:
                stem = os.path.splitext(os.path.basename(rows[index]["path"]))[0]
                name = os.path.join(out_dir, "gradcam", f"{index:05d}_{stem}.png")
                caption = f"grade {int(p.argmax())} (p={p.max():.2f})" + (
                    f", referable score {clinical.referable_score(p[None])[0]:.2f}" if k > 2 else ""
                )
                fileio.write_atomic(name, gradcam_lib.overlay_png(
                    crop, gradcam_lib.unit(heat[i], scale), caption=caption,
                    scale_label=f"{scale:.3g}"))  # fmt: skip
                rows[index]["gradcam"] = name
        pending.clear()
        write_done()

    try:
        for path in paths:
            row = {"path": path, "error": ""}
            rows.append(row)
            try:
                prepared = prepare_photograph(path, prep, overlay_side if gradcam else None)
            except Exception as e:  # noqa: BLE001 - one bad photograph must not stop the others
                row["error"] = fundus.describe_failure(e)
                continue
            pending.append((len(rows) - 1, prepared.encoded, prepared.overlay))
            if len(pending) == batch_size:
                flush()
        flush()
        write_done()
    except BaseException:
        out.close()
        print(
            f"the rows graded so far are in {partial} (incomplete: {state['graded']} graded)",
            file=sys.stderr,
        )
        raise
    out.close()
    tf.io.gfile.rename(partial, target, overwrite=True)
    return {
        "graded": state["graded"],
        "unreadable": len(rows) - state["graded"],
        "csv": target,
        "rows": rows,
        **settings.describe(),
        "heat_scale": None if scale is None else {"value": scale, "from": scale_from},
    }
