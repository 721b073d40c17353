"""Teacher to pseudo-labels: a trained run grades the ``unlabelled`` split, and the chosen
photographs are written as a shard folder of their own whose ``train`` split the input pipeline
streams like any other.

Selection follows Noisy Student (Xie et al. 2020, "Self-training with Noisy Student improves
ImageNet classification"): drop images whose top probability is under a confidence threshold,
then balance the classes by the teacher's grade: the ``per_class`` most confident images of each
grade, duplicated at random where a grade has fewer. Each record keeps its original encoded
bytes (no second compression) and gains the teacher's class probabilities
(``image/class/probabilities``) beside its hard grade (``image/class/label``, the argmax).
"""

from __future__ import annotations

import collections
import json
import os

import numpy as np
import tensorflow as tf

import effdr_tf
from effdr_tf import constants, fileio
from effdr_tf.data.schema import UNLABELLED
from effdr_tf.errors import EffdrError
from effdr_tf.evaluation import scoring
from effdr_tf.pipeline import input as pipeline

MANIFEST = "manifest.json"
SPLIT = "train"  # the pseudo-labelled images are the training data of the student
IMAGES_PER_SHARD = 1024


def select(probabilities, *, threshold: float = 0.0, per_class: int = 0, seed: int = 0):
    """Indices (with repeats where a grade is duplicated) of the images to keep, grouped by
    the teacher's grade.

    Args:
        probabilities: [N, K] teacher class probabilities.
        threshold: images whose top probability is below it are dropped.
        per_class: 0 keeps every confident image; otherwise each grade gets exactly this many:
            its most confident images (by that grade's probability), duplicated at random when
            it has fewer. A grade with no confident image gets none.
        seed: the duplication draws.
    """
    p = np.asarray(probabilities, np.float64)
    grade = p.argmax(1)
    confident = p.max(1) >= threshold
    rng = np.random.default_rng([seed, 31])
    chosen = []
    for c in range(p.shape[1]):
        members = np.nonzero(confident & (grade == c))[0]
        members = members[np.argsort(-p[members, c], kind="stable")]
        if per_class > 0 and len(members):
            if len(members) >= per_class:
                members = members[:per_class]
            else:
                extra = rng.choice(members, per_class - len(members), replace=True)
                members = np.concatenate([members, np.sort(extra)])
        chosen.append(members)
    return np.concatenate(chosen).astype(np.int64) if chosen else np.zeros(0, np.int64)


def _example(original: bytes, probabilities: np.ndarray, soft: bool) -> bytes:
    example = tf.train.Example.FromString(original)
    features = example.features.feature
    features[constants.FEATURE_LABEL].int64_list.value[:] = [int(np.argmax(probabilities))]
    values = probabilities if soft else np.eye(len(probabilities))[np.argmax(probabilities)]
    features[constants.FEATURE_SOFT_LABEL].float_list.value[:] = [float(v) for v in values]
    return example.SerializeToString(deterministic=True)


def _records_by_id(data_dir: str, split: str, manifest: dict, wanted=None) -> dict[str, bytes]:
    """The serialized records of ``split`` by id; only the ``wanted`` ids when given, so a
    large unlabelled split is not held in memory for the few images kept."""
    shards = pipeline.split_shards(data_dir, split, "size", manifest)
    out = {}
    for record in tf.data.TFRecordDataset([s["path"] for s in shards]):
        image_id = pipeline.parse(record)[constants.FEATURE_ID].numpy().decode()
        if wanted is None or image_id in wanted:
            out[image_id] = record.numpy()
    return out


def write(
    teacher,
    data_dir: str,
    out_dir: str,
    *,
    split: str = UNLABELLED,
    tta: str = "none",
    threshold: float = 0.0,
    per_class: int = 0,
    soft: bool = True,
    seed: int = 0,
) -> dict:
    """Grades ``split`` of ``data_dir`` with ``teacher`` (a run folder, or several
    comma-separated: an ensemble) and writes the chosen images to ``out_dir``; returns its
    manifest. A finished ``out_dir`` (one with a manifest) is returned as it is.
    """
    manifest_path = os.path.join(out_dir, MANIFEST)
    if tf.io.gfile.exists(manifest_path):
        with tf.io.gfile.GFile(manifest_path) as f:
            return json.load(f)
    source = pipeline.load_manifest(data_dir)
    if split not in source["splits"]:
        raise EffdrError(
            f"{data_dir}: no split {split!r}; build the unlabelled photographs with "
            "tfrecord_builder.py first (they become the 'unlabelled' split)"
        )
    runs = scoring.load_runs(teacher)
    if runs[0].num_classes != int(source["num_classes"]):
        raise EffdrError(
            f"{teacher}: grades {runs[0].num_classes} classes, {data_dir} has "
            f"{source['num_classes']}"
        )
    scored = scoring.score_split_ensemble(runs, data_dir, split, tta=tta)
    probabilities = scored["probabilities"].astype(np.float32)
    chosen = select(probabilities, threshold=threshold, per_class=per_class, seed=seed)
    originals = _records_by_id(data_dir, split, source, {scored["ids"][i] for i in chosen})
    k = probabilities.shape[1]
    by_grade = collections.defaultdict(list)
    for i in chosen:
        by_grade[int(probabilities[i].argmax())].append(int(i))
    # One grade per shard, as the builder writes training shards, so the balanced sampler can
    # stream grades separately.
    plan = []
    for grade in sorted(by_grade):
        members = by_grade[grade]
        for start in range(0, len(members), IMAGES_PER_SHARD):
            plan.append((grade, members[start : start + IMAGES_PER_SHARD]))
    tf.io.gfile.makedirs(out_dir)
    shards = []
    for n, (grade, members) in enumerate(plan):
        name = f"{SPLIT}-{n:05d}-of-{len(plan):05d}.tfrecord"
        path = os.path.join(out_dir, name)
        with tf.io.TFRecordWriter(f"{path}.tmp") as writer:
            for i in members:
                writer.write(_example(originals[scored["ids"][i]], probabilities[i], soft))
        shards.append(
            {
                "name": name,
                "count": len(members),
                "bytes": tf.io.gfile.stat(f"{path}.tmp").length,
                "sha256": fileio.sha256(f"{path}.tmp"),
                "class_counts": {str(grade): len(members)},
            }
        )
        tf.io.gfile.rename(f"{path}.tmp", path, overwrite=True)
    counts = collections.Counter(int(probabilities[i].argmax()) for i in chosen)
    manifest = {
        "format_version": source["format_version"],
        "created_by": f"effdr_tf {effdr_tf.__version__}",
        "source": {
            "name": "pseudo_labels",
            "data_dir": data_dir,
            "split": split,
            "teacher": [r.model_dir for r in runs],
            "tta": tta,
            "threshold": threshold,
            "per_class": per_class,
            "soft": soft,
            "seed": seed,
            "scored": len(probabilities),
            "unique_images": len(set(chosen.tolist())),
        },
        "num_classes": k,
        "image_size": source["image_size"],
        "preprocessing": source["preprocessing"],
        "seed": seed,
        "val_fraction": 0.0,
        "splits": {
            SPLIT: {
                "count": len(chosen),
                "class_counts": {str(c): counts.get(c, 0) for c in range(k)},
                "shards": shards,
            }
        },
        "num_seen": len(probabilities),
        "num_written": len(chosen),
        "num_rejected": 0,
    }
    fileio.write_atomic(manifest_path, json.dumps(manifest, indent=1))
    return manifest
