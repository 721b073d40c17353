"""Batch grading of photographs on Apache Beam: ``eval.py --images=... --runner=beam``.

The pipeline gives every photograph the row ``predict_images`` (``--runner=local``) gives it:
the same preparation (``predict.prepare_photograph``: the pixel budget, the decode, the shards'
fundus preprocessing at the run's input size), the same decode and forward pass
(``predict.grading_functions``: ``scoring.images_from_bytes`` and ``scoring.tta_probabilities``
as tf.functions), and the same rows (``predict.graded_row``/``predict.error_row``) under the
same checked grading.json and referable rule (``predict.grading_settings``)::

    Create(paths) -> Reshuffle -> prepare each photograph (a failure: its error row)
        -> RunInference(KeyedModelHandler(RunModelHandler)) -> its graded row
        -> Flatten with the error rows -> WriteToText (sharded CSV)

The model is loaded once per worker process by ``RunModelHandler.load_model`` through
``scoring.load_run``. Beam's own ``TFModelHandlerTensor`` is not used: it loads the file with
``tf.keras.models.load_model`` (its module also imports ``tensorflow_hub``, which this project
does not install) and calls the bare Keras model on tensors. Under Keras 3 that reads
``export/model.keras`` but none of what a run is besides it: config.json (the head that turns
outputs into probabilities, the evaluation decode, crop and normalisation, the prior
correction), the float32 copy of a mixed-precision export and the test-time views, so its
outputs would not be the rows ``--runner=local`` writes.

Output: ``OUT/predictions-SSSSS-of-NNNNN.csv``, each shard starting with predictions.csv's
header, one row per listed path in all (in no particular order: sort by ``path``), and
``OUT/grading_rule.json`` with the rule applied and the counts. Grad-CAM overlays are not
offered on this runner.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Iterable, Sequence

from effdr_tf import fileio
from effdr_tf.beam_options import import_beam, pipeline_options
from effdr_tf.data import fundus
from effdr_tf.errors import EffdrError
from effdr_tf.evaluation import predict, scoring

# Beam is an optional extra: a missing install is one error line with the command to add it,
# before the classes below need Beam's base class.
beam = import_beam()
from apache_beam.ml.inference import base as inference  # noqa: E402
from apache_beam.runners.runner import PipelineState  # noqa: E402

SHARD_PREFIX = "predictions"
SHARD_TEMPLATE = "-SSSSS-of-NNNNN"
SHARD_SUFFIX = ".csv"
SHARD_PATTERN = f"{SHARD_PREFIX}-*-of-*{SHARD_SUFFIX}"
RULE_FILE = "grading_rule.json"
ERRORS = "errors"


@dataclasses.dataclass
class LoadedRun:
    """What a worker holds once: the run and its traced decode and forward pass (a class, not
    a tuple: Beam keeps the model behind a weak reference)."""

    run: scoring.Run
    prepare: object
    forward: object


class RunModelHandler(inference.ModelHandler):
    """A train.py run for RunInference: encoded model inputs (bytes) to class probabilities.

    Args:
        model_dir: the run's folder (local or ``gs://``), read by each worker.
        settings: ``predict.grading_settings`` (the views to average).
        prior_correction: as for ``scoring.load_run``.
        batch_size: photographs per forward pass (Beam's batches are exactly this size but
            for the last of a bundle).
    """

    def __init__(
        self,
        model_dir: str,
        settings: predict.Settings,
        *,
        prior_correction: bool,
        batch_size: int,
    ):
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size)
        self._model_dir = model_dir
        self._settings = settings
        self._prior_correction = prior_correction
        self._batch_size = batch_size

    def load_model(self) -> LoadedRun:
        """The run, loaded once per worker process (Beam keeps it across bundles)."""
        run = scoring.load_run(self._model_dir, prior_correction=self._prior_correction)
        return LoadedRun(run, *predict.grading_functions(run, self._settings))

    def run_inference(
        self, batch: Sequence[bytes], model: LoadedRun, inference_args: dict | None = None
    ) -> Iterable[inference.PredictionResult]:
        """Probabilities [K] for each encoded photograph of ``batch``, in order."""
        import tensorflow as tf

        del inference_args
        probabilities = model.forward(model.prepare(tf.constant(list(batch)))).numpy()
        return [
            inference.PredictionResult(example, p)
            for example, p in zip(batch, probabilities, strict=True)
        ]

    def batch_elements_kwargs(self) -> dict:
        return {"min_batch_size": self._batch_size, "max_batch_size": self._batch_size}

    def get_num_bytes(self, batch: Sequence[bytes]) -> int:
        return sum(len(b) for b in batch)

    def get_metrics_namespace(self) -> str:
        return "effdr_grading"


class PreparePhotograph(beam.DoFn):
    """(path, encoded model input) for a photograph that can be graded; its error row's CSV
    line on the ``errors`` output for one that cannot."""

    def __init__(self, preparation: predict.Preparation, num_classes: int):
        self._preparation = preparation
        self._num_classes = num_classes

    def process(self, path: str):
        try:
            prepared = predict.prepare_photograph(path, self._preparation)
        except Exception as e:  # noqa: BLE001 - one bad photograph must not stop the others
            row = predict.error_row(path, fundus.describe_failure(e), self._num_classes)
            yield beam.pvalue.TaggedOutput(ERRORS, predict.csv_line(row))
            return
        yield path, prepared.encoded


def _graded_line(keyed, settings: predict.Settings) -> str:
    path, result = keyed
    return predict.csv_line(predict.graded_row(path, result.inference, settings))


def _count_rows(shards: list[str]) -> tuple[int, int]:
    """(graded, not graded) rows in the written shards."""
    import tensorflow as tf

    graded = total = 0
    for shard in shards:
        with tf.io.gfile.GFile(shard) as f:
            for row in csv.DictReader(f):
                total += 1
                graded += row["error"] == ""
    return graded, total - graded


def grade_with_beam(
    model_dir: str,
    images: str,
    out_dir: str,
    *,
    beam_options: str | None = None,
    workers: int = 1,
    batch_size: int | None = None,
    max_pixels: float | None = fundus.DEFAULT_MAX_PIXELS,
    grading: str | None = None,
    referable: str = "high_sensitivity",
    tta: str | None = None,
    rotations=None,
    prior_correction: bool = True,
) -> dict:
    """Grades the photographs ``images`` lists (``predict.list_images``: a folder, a CSV or a
    glob pattern such as ``gs://BUCKET/photos/*.jpeg``) on a Beam pipeline.

    The arguments are ``predict_images``'s, and mean the same; the rows are its rows.

    Args:
        model_dir: the run; the launching machine loads it once to check the grading.json and
            read the input size, and each worker loads it again.
        images: what to grade.
        out_dir: where the shards and ``grading_rule.json`` go (local or ``gs://``, which
            a Dataflow job needs).
        beam_options: pipeline options as one string (``beam_options.pipeline_options``);
            empty runs here on Beam's local runner (FnApiRunner).
        workers: local runner processes when ``beam_options`` names no runner.
        batch_size: photographs per forward pass (default ``predict.BATCH_SIZE``).
        max_pixels: the pixel budget a photograph's header may declare.
        grading: grading.json; default the run's own evaluation's.
        referable: the referable column's rule (``predict.REFERABLE_RULES``).
        tta: test-time views, or None for the grading.json's.
        rotations: extra rotated views, or None for the grading.json's.
        prior_correction: as for eval.py.

    Returns:
        ``graded`` and ``unreadable`` counts (read back from the shards), ``csv`` (the shards'
        pattern), ``shards``, and the settings ``predict_images`` reports.

    Raises:
        EffdrError: what ``predict_images`` raises before grading; bad pipeline options; a
            pipeline that did not finish.
    """
    import tensorflow as tf

    options = pipeline_options(beam_options, workers)
    run = scoring.load_run(model_dir, prior_correction=prior_correction)
    settings = predict.grading_settings(run, grading, referable, tta, rotations)
    paths = predict.list_images(images)
    preparation = predict.preparation(run, max_pixels)
    del run  # the workers load their own
    k = settings.num_classes
    handler = inference.KeyedModelHandler(
        RunModelHandler(
            model_dir,
            settings,
            prior_correction=prior_correction,
            batch_size=batch_size or predict.BATCH_SIZE,
        )
    )
    tf.io.gfile.makedirs(out_dir)
    # Shards of an earlier grading (perhaps with another shard count) must not pass for this
    # one's; Beam writes the new ones under temporary names and renames them at the end.
    for old in tf.io.gfile.glob(os.path.join(out_dir, SHARD_PATTERN)):
        tf.io.gfile.remove(old)

    pipeline = beam.Pipeline(options=options)
    prepared = (
        pipeline
        | "Paths" >> beam.Create(paths)
        # Create hands the whole list to one worker; reshuffling spreads the decoding.
        | "Spread" >> beam.Reshuffle()
        | "Prepare"
        >> beam.ParDo(PreparePhotograph(preparation, k)).with_outputs(ERRORS, main="prepared")
    )
    graded = (
        prepared.prepared
        | "Grade" >> inference.RunInference(handler)
        | "Rows" >> beam.Map(_graded_line, settings)
    )
    _ = (
        (graded, prepared[ERRORS])
        | "All rows" >> beam.Flatten()
        | "Write"
        >> beam.io.WriteToText(
            os.path.join(out_dir, SHARD_PREFIX),
            file_name_suffix=SHARD_SUFFIX,
            shard_name_template=SHARD_TEMPLATE,
            header=predict.csv_line(predict.csv_header(k)),
        )
    )
    result = pipeline.run()
    state = result.wait_until_finish()
    if state != PipelineState.DONE:
        raise EffdrError(f"the grading pipeline ended {state}; no rows are complete in {out_dir}")

    shards = sorted(tf.io.gfile.glob(os.path.join(out_dir, SHARD_PATTERN)))
    graded_count, unreadable = _count_rows(shards)
    if graded_count + unreadable != len(paths):
        raise EffdrError(
            f"{out_dir}: {graded_count + unreadable} rows for {len(paths)} photographs listed"
        )
    pattern = os.path.join(out_dir, f"{SHARD_PREFIX}-*-of-{len(shards):05d}{SHARD_SUFFIX}")
    summary = {
        "graded": graded_count,
        "unreadable": unreadable,
        "csv": pattern,
        "shards": shards,
        "model_dir": model_dir,
        "images": images,
        **settings.describe(),
        "heat_scale": None,
    }
    fileio.write_atomic(os.path.join(out_dir, RULE_FILE), json.dumps(summary, indent=2) + "\n")
    return summary
