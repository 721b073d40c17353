"""tf.data input pipelines over the builder's shards (format: effdr_tf/data/schema.py), local or gs://.

Training: per-class record streams (class-pure shards, see ``balance``) mixed to the target
shares -> shuffle -> per-example stateless seed -> decode the crop window only -> one resampling
for resize, flip and RandAugment's geometric ops -> photometric ops -> batch (dropping the
remainder) -> prefetch.

Evaluation: the split's shards in order -> decode -> centre crop -> resize -> batch (keeping the
remainder): every example exactly once.

Multi-worker and TPU hosts each read their own files (``input_context``), so the tf.distribute
auto-shard policy is switched off on purpose. Nothing here calls Python at run time: the whole
pipeline is graph code, as a TPU VM host needs.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import tensorflow as tf

from effdr_tf import constants, fileio
from effdr_tf.errors import EffdrError
from effdr_tf.pipeline import balance, randaugment

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CLASS_SHUFFLE_BUFFER = 128
FEATURES = {
    constants.FEATURE_IMAGE: tf.io.FixedLenFeature([], tf.string),
    constants.FEATURE_LABEL: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    constants.FEATURE_ID: tf.io.FixedLenFeature([], tf.string, default_value=""),
    constants.FEATURE_PATIENT_ID: tf.io.FixedLenFeature([], tf.string, default_value=""),
    constants.FEATURE_EYE: tf.io.FixedLenFeature([], tf.string, default_value=""),
}
TRAIN_CROPS = {
    # tensorflow/tpu preprocessing.py distorted_bounding_box_crop.
    "reference": {"area": (0.08, 1.0), "aspect": (3 / 4, 4 / 3), "cover": 0.1},
    # Keeps most of the fundus disc: lesions near the rim stay in view.
    "fundus": {"area": (0.65, 1.0), "aspect": (0.9, 1.1), "cover": 0.5},
}


# --------------------------------------------------------------------------------------------
# Shards and their manifest


def load_manifest(data_dir: str) -> dict:
    path = os.path.join(data_dir, MANIFEST)
    if not tf.io.gfile.exists(path):
        raise EffdrError(f"{path}: not found; build the shards with tfrecord_builder.py first")
    with tf.io.gfile.GFile(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise EffdrError(f"{path}: not valid JSON ({e})") from e


def split_shards(data_dir: str, split: str, verify: str = "size", manifest=None) -> list[dict]:
    """The split's shards from the manifest, checked: missing or damaged files are errors.

    Args:
        data_dir: the builder's output folder.
        split: a split name in the manifest.
        verify: "size" (file sizes against the manifest: catches truncation, cheap), "sha256"
            (reads every byte) or "none" (existence only).
        manifest: the loaded manifest (read from data_dir when None).
    """
    manifest = manifest or load_manifest(data_dir)
    if split not in manifest["splits"]:
        raise EffdrError(f"{data_dir}: no split {split!r} (has {', '.join(manifest['splits'])})")
    shards = []
    for shard in manifest["splits"][split]["shards"]:
        path = os.path.join(data_dir, shard["name"])
        if not tf.io.gfile.exists(path):
            raise EffdrError(f"{path}: shard listed in the manifest is missing")
        if verify in ("size", "sha256") and "bytes" in shard:
            size = tf.io.gfile.stat(path).length
            if size != shard["bytes"]:
                raise EffdrError(
                    f"{path}: {size} bytes, the manifest says {shard['bytes']}: truncated or "
                    "replaced; rebuild it"
                )
        if verify == "sha256" and fileio.sha256(path) != shard["sha256"]:
            raise EffdrError(f"{path}: sha256 differs from the manifest: the shard is corrupt")
        shards.append({**shard, "path": path})
    return shards


def find_corrupt_shards(data_dir: str, split: str) -> list[str]:
    """Shards of ``split`` whose sha256 differs from the manifest (to explain a DataLossError,
    whose message does not name the file)."""
    bad = []
    for shard in load_manifest(data_dir)["splits"][split]["shards"]:
        path = os.path.join(data_dir, shard["name"])
        if not tf.io.gfile.exists(path) or fileio.sha256(path) != shard["sha256"]:
            bad.append(path)
    return bad


def _for_this_host(items: list, input_context) -> tuple[list, bool]:
    """This input pipeline's share of files; (all files, True) when there are too few files,
    in which case records are sharded instead."""
    if input_context is None or input_context.num_input_pipelines == 1:
        return items, False
    n, i = input_context.num_input_pipelines, input_context.input_pipeline_id
    if len(items) >= n:
        return items[i::n], False
    return items, True


# --------------------------------------------------------------------------------------------
# Per-example work


def parse(record):
    return tf.io.parse_single_example(record, FEATURES)


def _decode_crop_window(encoded, seed, crop: dict | None):
    """Decodes the training crop window only (JPEG: decode_and_crop_jpeg); returns
    (window pixels, window height, window width)."""
    is_jpeg = tf.io.is_jpeg(encoded)
    shape = tf.cond(
        is_jpeg,
        lambda: tf.io.extract_jpeg_shape(encoded),
        lambda: tf.shape(tf.io.decode_image(encoded, channels=3, expand_animations=False)),
    )
    if crop is None:
        begin = tf.zeros([3], tf.int32)
        size = tf.stack([shape[0], shape[1], -1])
    else:
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            shape,
            bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
            seed=seed,
            min_object_covered=crop["cover"],
            aspect_ratio_range=crop["aspect"],
            area_range=crop["area"],
            max_attempts=10,
            use_image_if_no_bounding_boxes=True,
        )
    window = tf.stack([begin[0], begin[1], size[0], size[1]])
    image = tf.cond(
        is_jpeg,
        lambda: tf.io.decode_and_crop_jpeg(encoded, window, channels=3),
        lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False)[
            begin[0] : begin[0] + size[0], begin[1] : begin[1] + size[1]
        ],
    )
    return image, size[0], size[1]


def _normalize(image, normalization: str):
    if normalization == "model":
        return image
    mean, std = constants.NORMALIZATION_PRESETS[normalization]
    return (image / 255.0 - tf.constant(mean)) / tf.constant(std)


def train_example(encoded, seed, *, size, crop, flip, augmenter, normalization):
    """One training image, float32 [size, size, 3]."""
    seeds = tf.random.experimental.stateless_split(seed, 3)
    window, _, _ = _decode_crop_window(encoded, seeds[0], crop)
    do_flip = flip & (tf.random.stateless_uniform([], seeds[1]) < 0.5)
    if augmenter is None:
        out = randaugment.quantize(randaugment.shifted_resize(window, (size, size), do_flip))
    else:
        out = augmenter(window, seeds[2], flip=do_flip, out_size=(size, size))
    image = tf.ensure_shape(out, [size, size, 3])
    return _normalize(image, normalization)


def eval_example(encoded, *, size, crop_fraction, normalization):
    """One evaluation image: centre crop, resize (bilinear, anti-aliased); float32."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    if crop_fraction < 1.0:
        image = tf.image.central_crop(image, crop_fraction)
    image = tf.cast(image, tf.float32)
    shape = tf.shape(image)
    image = tf.cond(
        tf.reduce_all(tf.equal(shape[:2], [size, size])),
        lambda: image,
        lambda: tf.image.resize(image, [size, size], method="bilinear", antialias=True),
    )
    image = tf.ensure_shape(image, [size, size, 3])
    return _normalize(image, normalization)


# --------------------------------------------------------------------------------------------
# Datasets


def record_stream(
    paths: list[str],
    *,
    cycle: int,
    deterministic: bool,
    cache: str = "",
    repeat_shuffled_seed: int | None = None,
    shard: tuple[int, int] | None = None,
):
    """Serialized records of ``paths``, read with a parallel interleave.

    With ``repeat_shuffled_seed`` the stream is infinite and the file order is reshuffled on
    every pass (training); without, the files are read once in order. ``shard=(n, i)`` keeps
    every n-th record of each pass starting at the i-th: with the same seed on every host, the
    n hosts read disjoint parts that cover the files on every pass (sharding after the repeat
    would not be a partition: a pass whose length n does not divide shifts the next one).
    """
    files = tf.data.Dataset.from_tensor_slices(paths)
    repeat = repeat_shuffled_seed is not None
    if repeat and not cache:
        files = files.shuffle(len(paths), seed=repeat_shuffled_seed)  # anew on every pass
        if shard is None:
            files = files.repeat()  # the interleave runs on across pass boundaries
    records = files.interleave(
        tf.data.TFRecordDataset,
        cycle_length=max(1, min(cycle, len(paths))),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic or shard is not None,
    )
    if shard is not None:
        records = records.shard(*shard)
    if cache:
        records = records.cache() if cache == "memory" else records.cache(cache)
    if repeat and (cache or shard is not None):
        records = records.repeat()
    return records


def _options(deterministic: bool) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = deterministic
    # Each host reads its own files (see _for_this_host): no automatic re-sharding on top.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


def _image_size(config, manifest) -> int:
    return int(config.data.image_size or manifest["image_size"])


def _augmenter(config):
    if config.augment.name == "none":
        return None
    if config.augment.name != "randaugment":
        raise EffdrError(f"augment.name={config.augment.name!r}: choose randaugment or none")
    return randaugment.RandAugment(
        num_layers=config.augment.num_layers,
        magnitude=config.augment.magnitude,
        magnitude_std=config.augment.magnitude_std,
        weights=dict(config.augment.custom_weights or {}) or config.augment.weights,
        max_magnitude=config.augment.max_magnitude,
        fill_value=config.augment.fill_value,
    )


def _train_crop(config):
    if config.data.train_crop == "none":
        return None
    if config.data.train_crop not in TRAIN_CROPS:
        raise EffdrError(
            f"data.train_crop={config.data.train_crop!r}: choose reference, fundus or none"
        )
    crop = dict(TRAIN_CROPS[config.data.train_crop])
    if config.data.train_crop == "reference":  # the ranges in the config refine the reference
        crop = {
            "area": tuple(config.data.crop_area_range),
            "aspect": tuple(config.data.crop_aspect_range),
            "cover": float(config.data.crop_min_object_covered),
        }
    return crop


def _cache_for(cache: str, stream: str) -> str:
    """In memory, or one cache file per stream (tf.data caches may not be shared)."""
    return cache if cache in ("", "memory") else f"{cache}.{stream}"


def class_streams(shards, num_classes, input_context, config, seed) -> dict:
    """One infinite, shuffled record stream per class from class-pure shards."""
    by_class = {c: [] for c in range(num_classes)}
    for shard in shards:
        present = [int(c) for c, n in shard.get("class_counts", {}).items() if n]
        if len(present) > 1:
            raise EffdrError(
                f"{shard['path']}: holds several classes; training shards must be class-pure "
                "(rebuild them with this version of tfrecord_builder.py)"
            )
        if present:
            by_class[present[0]].append(shard["path"])
    streams = {}
    for c, paths in by_class.items():
        if not paths:
            continue
        mine, shard_records = _for_this_host(sorted(paths), input_context)
        # Fewer files than hosts: every host reads the class's files in one order (same seed,
        # deterministic interleave) and keeps every n-th record, a partition of the class.
        records = record_stream(
            mine,
            cycle=config.data.interleave_cycle,
            deterministic=config.data.deterministic,
            cache=_cache_for(config.data.cache, f"class{c}"),
            repeat_shuffled_seed=(int(config.seed) if shard_records else seed) + c,
            shard=(
                (input_context.num_input_pipelines, input_context.input_pipeline_id)
                if shard_records
                else None
            ),
        )
        # A small buffer per class: the builder shuffled each split and the mixed stream is
        # shuffled again; large per-class buffers would read ahead records never emitted.
        streams[c] = records.shuffle(CLASS_SHUFFLE_BUFFER, seed=seed + c)
    return streams


def make_dataset(
    config,
    split: str,
    *,
    input_context: tf.distribute.InputContext | None = None,
    training: bool | None = None,
    batch_size: int | None = None,
    return_metadata: bool = False,
    examples_seen: int = 0,
    transfer: bool = False,
) -> tf.data.Dataset:
    """The input pipeline for one split.

    Args:
        config: a ConfigDict with ``data``, ``augment`` and ``balance`` (configs/default.py).
        split: a split in the manifest.
        input_context: from ``strategy.distribute_datasets_from_function``: this host's
            pipeline id and count, and the per-replica batch size.
        training: augment, rebalance, repeat and drop the remainder; default: split == "train".
        batch_size: global batch size; default ``data.batch_size`` (training) or
            ``data.eval_batch_size``.
        return_metadata: evaluation only: yield ``(images, labels, {"id", "patient_id",
            "eye"})``.
        examples_seen: training: examples the run has already drawn (all hosts together),
            so a resumed stream continues the sampler's share schedule where it was.
        transfer: training with ``data.normalization="model"``: yield the images as uint8
            (their pixels are whole numbers in [0, 255] already), a quarter of float32's
            bytes host -> device; the training step casts them back.

    Returns:
        Batches of ``(images float32 [B, S, S, 3], labels int32 [B])``; for training with
        ``selftrain.pseudo_dir`` set, ``(images, targets float32 [B, K])``: one-hot grades of
        the labelled images and the teacher's probabilities (or their one-hot argmax) of the
        pseudo-labelled ones, mixed at ``selftrain.pseudo_fraction``.
    """
    training = split == "train" if training is None else training
    data_dir = config.data.data_dir
    manifest = load_manifest(data_dir)
    shards = split_shards(data_dir, split, config.data.verify_shards, manifest)
    size = _image_size(config, manifest)
    normalization = config.data.normalization
    if normalization != "model" and normalization not in constants.NORMALIZATION_PRESETS:
        raise EffdrError(f"data.normalization={normalization!r}: 'model' or a preset name")
    if batch_size is None:
        batch_size = config.data.batch_size if training else config.data.eval_batch_size
    if input_context is not None:
        replicas = input_context.num_replicas_in_sync
        if batch_size % replicas:
            raise EffdrError(
                f"batch size {batch_size} does not divide across {replicas} replicas; "
                "choose a multiple"
            )
        batch_size = input_context.get_per_replica_batch_size(batch_size)
    seed = int(config.seed) + 7919 * (input_context.input_pipeline_id if input_context else 0)

    if training:
        num_classes = int(manifest["num_classes"])
        counts = [
            manifest["splits"][split]["class_counts"].get(str(c), 0) for c in range(num_classes)
        ]

        def shares_for(target):
            if target == "explicit":
                if not config.balance.shares:
                    raise EffdrError("balance.target=explicit needs balance.shares")
                target = list(config.balance.shares)
            return balance.target_shares(counts, target, config.balance.multipliers)

        start = shares_for(config.balance.target)
        end = shares_for(config.balance.final_target) if config.balance.final_target else None
        pipelines = input_context.num_input_pipelines if input_context else 1
        shares = balance.schedule(
            start, end, config.balance.transition_examples, int(examples_seen) // pipelines
        )
        streams = class_streams(shards, num_classes, input_context, config, seed)
        records = balance.mix(streams, shares, seed)
        pseudo = _pseudo_labelled(config, num_classes, input_context, seed)
        if pseudo is not None:
            f = float(config.selftrain.pseudo_fraction)
            records = tf.data.Dataset.sample_from_datasets(
                [records, pseudo], weights=[1.0 - f, f], seed=seed + 3
            )
        if config.data.skip_corrupt:
            records = records.ignore_errors(log_warning=True)
        records = records.shuffle(config.data.shuffle_buffer, seed=seed)
        seeds = tf.data.Dataset.random(seed=seed).batch(2)
        augmenter = _augmenter(config)
        crop = _train_crop(config)
        flip = tf.constant(bool(config.data.horizontal_flip))

        soft_spec = {
            constants.FEATURE_SOFT_LABEL: tf.io.FixedLenFeature(
                [num_classes], tf.float32, default_value=[-1.0] * num_classes
            )
        }
        soft = bool(config.get("selftrain", {}).get("soft", True))
        soft = soft and config.model.get("head", "softmax") == "softmax"
        as_uint8 = bool(transfer) and normalization == "model"

        def target(record, label):
            """One-hot grade, or the teacher's probabilities on a pseudo-labelled record."""
            teacher = tf.io.parse_single_example(record, soft_spec)[constants.FEATURE_SOFT_LABEL]
            hard = tf.one_hot(label, num_classes)
            if not soft:
                return hard
            return tf.where(teacher[0] < 0, hard, teacher)

        def prepare(record, example_seed):
            example = parse(record)
            image = train_example(
                example[constants.FEATURE_IMAGE],
                example_seed,
                size=size,
                crop=crop,
                flip=flip,
                augmenter=augmenter,
                normalization=normalization,
            )
            label = tf.cast(example[constants.FEATURE_LABEL], tf.int32)
            if as_uint8:
                image = tf.cast(image, tf.uint8)
            if pseudo is not None:
                return image, target(record, label)
            return image, label

        ds = tf.data.Dataset.zip((records, seeds)).map(
            prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=config.data.deterministic
        )
        ds = ds.batch(batch_size, drop_remainder=True)
    else:
        paths, shard_records = _for_this_host([s["path"] for s in shards], input_context)
        records = tf.data.TFRecordDataset(paths, num_parallel_reads=None)
        if shard_records:
            records = records.shard(
                input_context.num_input_pipelines, input_context.input_pipeline_id
            )
        if config.data.skip_corrupt:
            records = records.ignore_errors(log_warning=True)
        fraction = float(config.data.eval_crop_fraction)

        def prepare(record):
            example = parse(record)
            image = eval_example(
                example[constants.FEATURE_IMAGE],
                size=size,
                crop_fraction=fraction,
                normalization=normalization,
            )
            label = tf.cast(example[constants.FEATURE_LABEL], tf.int32)
            if return_metadata:
                meta = {
                    "id": example[constants.FEATURE_ID],
                    "patient_id": example[constants.FEATURE_PATIENT_ID],
                    "eye": example[constants.FEATURE_EYE],
                }
                return image, label, meta
            return image, label

        ds = records.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.batch(batch_size, drop_remainder=False)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options(config.data.deterministic))


def _pseudo_labelled(config, num_classes: int, input_context, seed: int):
    """The endless record stream of ``selftrain.pseudo_dir``'s train split, or None."""
    selftrain = config.get("selftrain")
    if selftrain is None or not selftrain.pseudo_dir:
        return None
    manifest = load_manifest(selftrain.pseudo_dir)
    if int(manifest["num_classes"]) != num_classes:
        raise EffdrError(
            f"{selftrain.pseudo_dir}: {manifest['num_classes']} classes, the labelled data "
            f"{num_classes}"
        )
    shards = split_shards(selftrain.pseudo_dir, "train", config.data.verify_shards, manifest)
    paths, shard_records = _for_this_host([s["path"] for s in shards], input_context)
    records = record_stream(
        paths,
        cycle=int(config.data.interleave_cycle),
        deterministic=bool(config.data.deterministic),
        repeat_shuffled_seed=seed + 1,
        shard=(input_context.num_input_pipelines, input_context.input_pipeline_id)
        if shard_records
        else None,
    )
    return records.shuffle(config.data.shuffle_buffer, seed=seed + 2)


def split_size(data_dir: str, split: str) -> int:
    """Examples in a split, from the manifest (steps per epoch, exactly-once checks)."""
    return int(load_manifest(data_dir)["splits"][split]["count"])


def class_counts(data_dir: str, split: str = "train") -> np.ndarray:
    manifest = load_manifest(data_dir)
    counts = manifest["splits"][split]["class_counts"]
    return np.array([counts.get(str(c), 0) for c in range(int(manifest["num_classes"]))])
