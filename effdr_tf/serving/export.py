"""Models to ship: a SavedModel that takes encoded image bytes, and TFLite files.

    python -m effdr_tf.serving.export --model_dir=RUN [--formats=saved_model,float32,float16,int8]

Written under ``RUN/serving/``:

* ``saved_model_bytes/``: signature ``serving_default(image_bytes: string [N])`` returning
  ``probabilities`` [N, K], ``grade`` [N] and ``referable_score`` [N]. Decoding, the centre crop
  of the run's config and the resize happen in the graph; the images are expected already
  cropped to the fundus disc as the builder does (``eval.py --images`` does that with OpenCV).
* ``model_float32.tflite``, ``model_float16.tflite`` (float16 weights), ``model_int8.tflite``
  (int8 weights and activations, float input and output, calibrated on the run's validation
  images), converted from the run's ``export/saved_model``; they return the head's raw outputs
  (logits for softmax; ``effdr_tf.models.heads.probabilities`` reads any head). Swish is a
  plain x*sigmoid(x) here and the in-model normalisation a Keras Normalization or Rescaling
  layer, so the converter needs no custom ops.
* ``prior_correction.json``, for a run trained on rebalanced classes: the SavedModel's
  probabilities are already under the training data's natural class shares
  (``effdr_tf.evaluation.priors``); the TFLite files' raw outputs are not, and a client applies
  the ratios recorded there (``run_tflite`` does) to read what eval.py reads.

Each output is checked against the Keras model on validation images and the differences are
returned (and printed by the command).
"""

from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf

from effdr_tf import fileio
from effdr_tf.errors import EffdrError
from effdr_tf.evaluation import clinical, priors, scoring
from effdr_tf.models import heads
from effdr_tf.pipeline import input as pipeline

FORMATS = ("saved_model", "float32", "float16", "int8")


def _samples(run: scoring.Run, count: int) -> tuple[np.ndarray, list[bytes]]:
    """Up to ``count`` images of the run's validation split (else train): model inputs for
    calibration and checks, and the same images encoded, for the bytes signature."""
    data_dir = run.config.data.data_dir
    manifest = pipeline.load_manifest(data_dir)
    split = "validation" if "validation" in manifest["splits"] else "train"
    paths = [s["path"] for s in pipeline.split_shards(data_dir, split, "none", manifest)]
    encoded = [
        pipeline.parse(record)["image/encoded"].numpy()
        for record in tf.data.TFRecordDataset(paths).take(count)
    ]
    if not encoded:
        raise EffdrError(f"{data_dir}: no images to calibrate and check with")
    return scoring.images_from_bytes(run, tf.constant(encoded)).numpy(), encoded


class BytesServer(tf.Module):
    """Encoded bytes in, probabilities out: the run's eval preprocessing in the graph."""

    def __init__(self, run: scoring.Run):
        super().__init__()
        self.run = run
        self.model = run.model

    # No autograph: the body has no Python control flow, and autograph's cache of converted
    # functions was seen to hand back another function's conversion in long test sessions.
    @tf.function(
        input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")], autograph=False
    )
    def serve(self, image_bytes):
        images = scoring.images_from_bytes(self.run, image_bytes)
        probs = self.run.probabilities(images)
        return {
            "probabilities": probs,
            "grade": tf.argmax(probs, -1, output_type=tf.int32),
            "referable_score": tf.reduce_sum(probs[:, clinical.REFERABLE_GRADE :], -1),
        }


def _tflite(run: scoring.Run, kind: str, calibration: np.ndarray) -> bytes:
    """Converts the run's exported SavedModel (logits; weights frozen by the converter)."""
    saved = os.path.join(run.model_dir, "export", "saved_model")
    if not tf.io.gfile.exists(saved):
        raise EffdrError(f"{saved}: not found; the run was exported without a SavedModel")
    converter = tf.lite.TFLiteConverter.from_saved_model(saved)
    if kind == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif kind == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([x[None]] for x in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def run_tflite(
    model_bytes: bytes,
    images: np.ndarray,
    head: str = "softmax",
    num_classes: int | None = None,
    prior: dict | None = None,
) -> np.ndarray:
    """Class probabilities from a converted model (which returns the head's raw outputs), one
    image at a time; ``effdr_tf.models.heads`` reads the outputs and ``prior`` (a run's
    ``prior_correction``) moves them to the natural class shares."""
    interpreter = tf.lite.Interpreter(model_content=model_bytes)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    results = []
    for image in images:
        interpreter.set_tensor(inp["index"], image[None].astype(np.float32))
        interpreter.invoke()
        results.append(interpreter.get_tensor(out["index"])[0])
    outputs = np.stack(results).astype(np.float32)
    probs = heads.probabilities(outputs, head, num_classes)
    return np.asarray(priors.apply(probs, prior), np.float64)


def export(model_dir: str, formats=FORMATS, *, check_images: int = 32) -> dict:
    """Writes the requested formats under ``model_dir/serving`` and returns, per format, the
    path and its agreement with the Keras model on validation images."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise EffdrError(f"--formats: unknown {', '.join(unknown)}; choose from {FORMATS}")
    run = scoring.load_run(model_dir)
    folder = os.path.join(model_dir, "serving")
    tf.io.gfile.makedirs(folder)
    images, encoded = _samples(run, check_images)
    reference = run.probabilities(images).numpy()
    report = {}
    if run.prior_correction:
        target = os.path.join(folder, "prior_correction.json")
        fileio.write_atomic(target, json.dumps(run.prior_correction, indent=2))
        report["prior_correction"] = {"path": target}
    if "saved_model" in formats:
        target = os.path.join(folder, "saved_model_bytes")
        tmp = fileio.temporary_name(target)
        fileio.remove_tree(tmp)
        server = BytesServer(run)
        tf.saved_model.save(server, tmp, signatures={"serving_default": server.serve})
        fileio.replace_dir(tmp, target)
        served = (
            tf.saved_model.load(target)
            .signatures["serving_default"](image_bytes=tf.constant(encoded))["probabilities"]
            .numpy()
        )
        local = run.probabilities(scoring.images_from_bytes(run, tf.constant(encoded))).numpy()
        report["saved_model"] = {
            "path": target,
            "max_abs_diff": float(np.abs(served - local).max()),
        }
    for kind in ("float32", "float16", "int8"):
        if kind not in formats:
            continue
        data = _tflite(run, kind, images)
        target = os.path.join(folder, f"model_{kind}.tflite")
        fileio.write_atomic(target, data)
        got = run_tflite(data, images, run.head, run.num_classes, run.prior_correction)
        report[kind] = {
            "path": target,
            "bytes": len(data),
            "max_abs_diff": float(np.abs(got - reference).max()),
            "argmax_agreement": float(np.mean(got.argmax(1) == reference.argmax(1))),
        }
    return report


def main(argv):
    from absl import flags

    del argv
    report = export(flags.FLAGS.model_dir, flags.FLAGS.formats)
    for kind, values in report.items():
        facts = " ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in values.items())  # fmt: skip
        print(f"{kind}: {facts}")


if __name__ == "__main__":
    from absl import app, flags

    from effdr_tf import cli

    flags.DEFINE_string("model_dir", None, "A train.py model_dir.", required=True)
    flags.DEFINE_list("formats", list(FORMATS), "saved_model, float32, float16, int8.")
    app.run(cli.entry_point(main), flags_parser=cli.parse_flags_or_exit)
