"""Loading a trained run and scoring the examples of a split with it.

A run is a train.py model_dir: ``config.json`` (how it was trained, including the input
normalisation) and ``export/model.keras`` (the best weights, EMA weights when EMA was on).

A run trained on rebalanced classes has its probabilities moved back to its training data's
natural class shares (``priors``), on by default: every consumer of ``Run.probabilities``
(evaluation, ``--images``, ensembles, exports, teachers) reads the same corrected figures.
"""

from __future__ import annotations

import dataclasses
import json
import os

import ml_collections
import numpy as np
import tensorflow as tf

from effdr_tf import models
from effdr_tf.errors import EffdrError
from effdr_tf.evaluation import priors
from effdr_tf.models import heads
from effdr_tf.pipeline import input as pipeline
from effdr_tf.pipeline import randaugment

MODEL_FILE = os.path.join("export", "model.keras")


@dataclasses.dataclass
class Run:
    model_dir: str
    model: object
    config: ml_collections.ConfigDict
    # None, or how the probabilities are moved to the training data's natural class shares
    # (``priors.correction``: "from", "to", "ratio", "source", ...).
    prior_correction: dict | None = None
    _forward: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def image_size(self) -> int:
        return int(self.model.input_shape[1])

    @property
    def head(self) -> str:
        # Runs from before heads were configurable had a softmax.
        return heads.check(self.config.model.get("head", "softmax"))

    @property
    def num_classes(self) -> int:
        units = int(self.model.output_shape[-1])
        recorded = int(self.config.model.get("num_classes") or 0)
        return recorded or heads.num_classes_from_units(self.head, units) or units

    def probabilities(self, images, training=False):
        """Class probabilities [N, K] of the run's model for a batch of model inputs, under
        the natural class shares when ``prior_correction`` is set."""
        probs = heads.probabilities(
            self.model(images, training=training), self.head, self.num_classes
        )
        return priors.apply(probs, self.prior_correction)


def load_run(model_dir: str, prior_correction: bool = True) -> Run:
    """The exported model and the resolved config of a train.py run.

    Args:
        model_dir: the run's folder.
        prior_correction: move the probabilities of a run trained on rebalanced classes to its
            training split's natural shares (``priors``); a run trained on its data's own
            shares is unchanged either way. False: the probabilities as the model learnt them.

    Raises:
        EffdrError: a missing or unreadable config or model; with ``prior_correction``, a
            rebalanced run whose training manifest cannot be read.
    """
    import keras

    config_path = os.path.join(model_dir, "config.json")
    model_path = os.path.join(model_dir, MODEL_FILE)
    if not tf.io.gfile.exists(config_path):
        raise EffdrError(f"{config_path}: not found; is {model_dir} a train.py model_dir?")
    if not tf.io.gfile.exists(model_path):
        raise EffdrError(
            f"{model_path}: not found; the run has no exported model (it ends with one unless "
            "train.export=False)"
        )
    with tf.io.gfile.GFile(config_path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    try:
        model = keras.saving.load_model(model_path, compile=False)
    except (OSError, ValueError) as e:
        raise EffdrError(f"{model_path}: cannot load ({str(e).splitlines()[0]})") from e
    # Runs exported before exports were made float32 may carry a mixed-precision policy.
    run = Run(model_dir, models.float32_copy(model), config)
    if prior_correction:
        run.prior_correction = priors.correction(config, run.num_classes, config_path)
    return run


def eval_config(run: Run, data_dir: str) -> ml_collections.ConfigDict:
    """The run's data settings (normalisation, eval crop) pointed at ``data_dir``, at the
    model's input size: a Kaggle-trained model reads APTOS shards as it read its own."""
    config = ml_collections.ConfigDict(run.config.to_dict())
    config.data.data_dir = data_dir
    config.data.image_size = run.image_size
    return config


def images_from_bytes(run: Run, encoded) -> tf.Tensor:
    """Encoded images (string [N]) to the model's input with the run's eval settings: the
    evaluation pipeline's own decode, centre crop and resize."""
    config = eval_config(run, "")
    return tf.map_fn(
        lambda e: pipeline.eval_example(
            e,
            size=run.image_size,
            crop_fraction=float(config.data.eval_crop_fraction),
            normalization=config.data.normalization,
        ),
        encoded,
        fn_output_signature=tf.float32,
    )


def score_split(
    run: Run, data_dir: str, split: str, *, tta: str = "none", rotations=(), batch_size=None
):
    """Probabilities for every example of ``split``, once each, in shard order.

    Returns:
        dict with ``ids``, ``patient_ids``, ``eyes`` (str arrays), ``labels`` (int) and
        ``probabilities`` (float32 [N, K]), averaged over the views of ``tta`` and
        ``rotations`` (``tta_views``).
    """
    if tta not in TTA_MODES:
        raise EffdrError(f"--tta={tta}: choose one of {', '.join(TTA_MODES)}")
    config = eval_config(run, data_dir)
    manifest = pipeline.load_manifest(data_dir)
    if split not in manifest["splits"]:
        raise EffdrError(
            f"{data_dir}: no split {split!r}; it has {', '.join(sorted(manifest['splits']))}"
        )
    ds = pipeline.make_dataset(
        config, split, training=False, batch_size=batch_size, return_metadata=True
    )
    forward = _forward(run, tta, tuple(float(a) for a in rotations))
    out = {k: [] for k in ("ids", "patient_ids", "eyes", "labels", "probabilities")}
    for images, labels, meta in ds:
        out["probabilities"].append(forward(images).numpy())
        out["labels"].append(labels.numpy())
        out["ids"].append(meta["id"].numpy())
        out["patient_ids"].append(meta["patient_id"].numpy())
        out["eyes"].append(meta["eye"].numpy())
    if not out["labels"]:
        raise EffdrError(f"{data_dir}: split {split!r} has no examples")
    result = {k: np.concatenate(v) for k, v in out.items()}
    for k in ("ids", "patient_ids", "eyes"):
        result[k] = np.array([v.decode() for v in result[k]])
    return result


def load_runs(model_dirs, prior_correction: bool = True) -> list[Run]:
    """Runs for an ensemble (``A,B,...`` or a list); they must grade the same classes. Each
    run's probabilities are corrected to its own training prior (``load_run``) before the
    ensemble averages them."""
    dirs = [d for d in (model_dirs.split(",") if isinstance(model_dirs, str) else model_dirs) if d]
    if not dirs:
        raise EffdrError("--model_dir: no run given")
    runs = [load_run(d, prior_correction=prior_correction) for d in dirs]
    classes = {r.model_dir: r.num_classes for r in runs}
    if len(set(classes.values())) > 1:
        raise EffdrError(
            "--model_dir: the runs grade different numbers of classes ("
            + ", ".join(f"{d}: {k}" for d, k in classes.items())
            + ")"
        )
    return runs


def prior_corrections(runs) -> list | None:
    """The runs' prior corrections for a report or ``grading.json``: one entry (None or
    ``priors.correction``'s dict) per run, or None when no run has one."""
    corrections = [r.prior_correction for r in runs]
    return corrections if any(corrections) else None


def prior_mismatch(recorded, runs) -> str | None:
    """Why probabilities fitted under ``recorded`` (a grading.json's ``prior_correction``) are
    not those ``runs`` make, or None when they are: operating points and cut points fitted on
    corrected probabilities do not apply to uncorrected ones, nor the reverse."""

    def ratios(corrections):
        corrections = list(corrections or [])
        corrections += [None] * (len(runs) - len(corrections))
        return [np.asarray((c or {}).get("ratio") or [], np.float64) for c in corrections]

    current = prior_corrections(runs)
    if all(
        a.shape == b.shape and np.allclose(a, b, rtol=1e-4)
        for a, b in zip(ratios(recorded), ratios(current), strict=False)
    ):
        return None

    def said(corrections):
        return "with" if any(corrections or []) else "without"

    return (
        f"fitted on probabilities {said(recorded)} the prior correction, scoring them "
        f"{said(current)} it (or with another one); use the same --prior_correction"
    )


def score_split_ensemble(
    runs, data_dir: str, split: str, *, tta: str = "none", rotations=(), batch_size=None
):
    """``score_split`` for each run, the class probabilities averaged (any mix of heads: each
    run's own head makes its probabilities, at its own input size and preprocessing)."""
    parts = [
        score_split(r, data_dir, split, tta=tta, rotations=rotations, batch_size=batch_size)
        for r in runs
    ]
    first = parts[0]
    for run, part in zip(runs[1:], parts[1:], strict=True):
        if not np.array_equal(part["ids"], first["ids"]):
            raise EffdrError(f"{run.model_dir}: scored {split!r} in another order than the others")
    if len(parts) > 1:
        first = dict(first)
        first["probabilities"] = np.mean([p["probabilities"] for p in parts], axis=0)
    return first


# Test-time augmentation: the views of each image whose class probabilities are averaged.
# A fundus photograph has no preferred orientation, so the dihedral group (rotations by 90
# degrees, each also mirrored) gives 8 views a grader would call the same eye.
TTA_MODES = ("none", "flip", "dihedral")


def rotate(images: tf.Tensor, degrees: float) -> tf.Tensor:
    """A batch of NHWC images rotated counter-clockwise about their centres (bilinear; the
    corners that come in repeat the nearest edge pixel, the black around a cropped fundus, in
    whatever normalisation the model's inputs have)."""
    shape = tf.shape(images)
    m = randaugment.rotate_matrix(float(degrees), shape[1], shape[2])
    transform = tf.reshape(m / m[2, 2], [-1])[:8]
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=tf.tile(transform[tf.newaxis], [shape[0], 1]),
        output_shape=shape[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="NEAREST",
    )


def tta_views(images: tf.Tensor, tta: str, rotations=()) -> list[tf.Tensor]:
    """The views of a batch of square NHWC images: ``none`` 1, ``flip`` 2 (left-right mirror),
    ``dihedral`` 8 (rotations by 0, 90, 180 and 270 degrees, each with its mirror); then one
    more view per angle in ``rotations`` (degrees, counter-clockwise), of the image as it is."""
    if tta == "none":
        views = [images]
    elif tta == "flip":
        views = [images, tf.reverse(images, axis=[2])]
    else:
        quarter = [tf.image.rot90(images, k) for k in range(4)]
        views = quarter + [tf.reverse(r, axis=[2]) for r in quarter]
    return views + [rotate(images, a) for a in rotations]


def tta_probabilities(probabilities, images: tf.Tensor, tta: str, rotations=()) -> tf.Tensor:
    """``probabilities`` (a function of a batch: class probabilities) averaged over the views
    of ``tta`` and ``rotations``, in float32."""
    views = tta_views(images, tta, rotations)
    if len(views) == 1:
        return tf.cast(probabilities(images), tf.float32)
    # One view at a time through one traced call: activations of one batch in memory, and the
    # model traced once rather than once per view.
    probs = tf.map_fn(
        lambda view: tf.cast(probabilities(view), tf.float32),
        tf.stack(views),
        fn_output_signature=tf.float32,
    )
    return tf.reduce_mean(probs, axis=0)


def _forward(run: Run, tta: str, rotations: tuple = ()):
    """``tta_probabilities`` for the run's model, traced once per run and kept: tracing an
    EfficientNet costs seconds, more than scoring a small split."""
    key = (tta, rotations)
    if key not in run._forward:

        @tf.function(
            input_signature=[tf.TensorSpec([None, run.image_size, run.image_size, 3], tf.float32)]
        )
        def forward(images):
            return tta_probabilities(run.probabilities, images, tta, rotations)

        run._forward[key] = forward
    return run._forward[key]
