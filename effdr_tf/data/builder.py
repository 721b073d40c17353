"""Sharded TFRecords from any source: parallel preprocessing, exact accounting, safe resumption.

Layout of the output folder (docs/datasets.md, "Outputs and reliability"):

    {split}-{i:05d}-of-{n:05d}.tfrecord   the shards
    manifest.json                         written last: its presence means "complete"
    rejects.csv                           path,reason for every input not written
    .parts/                               per-shard records while a build is in progress

The folder may hold other files (it may be the data dir): only what the manifest or
``.parts/params.json`` names is ever removed or replaced (``build``).

Worker processes decode and preprocess images (OpenCV only); the main process writes the
shards in a fixed order, so a build is byte-for-byte deterministic for a seed whatever the
number of workers. Each shard is written under a temporary name and renamed when complete, with
its record in ``.parts/`` written first: a build killed at any moment and run again redoes only
the shards that were not finished and gives the same files as an uninterrupted one.

``runner="beam"`` (``tfrecord_builder.py --runner=beam``) hands the two steps that decode
images, the near-duplicate hashing and the writing of the pending shards, to Apache Beam
pipelines (``effdr_tf.data.beam``) that call the same per-image and per-shard functions; the
plan, the resume checks, the manifest and rejects.csv stay here, so both runners give the same
files.
"""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import multiprocessing
import os
import re
import sys
from collections.abc import Iterable

import numpy as np

import effdr_tf
from effdr_tf import constants, fileio
from effdr_tf.beam_options import RUNNERS, pipeline_options
from effdr_tf.data import fundus, near_duplicates, splits
from effdr_tf.data.schema import SPLITS, UNKNOWN_LABEL, UNLABELLED, Record, Reject
from effdr_tf.data.sources import Source
from effdr_tf.errors import EffdrError

log = logging.getLogger(__name__)

IMAGES_PER_SHARD = 1024
DECODE_MARGIN = 1.25
MANIFEST = "manifest.json"
REJECTS = "rejects.csv"
PARTS = ".parts"
MANIFEST_VERSION = 1


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    """How to build; everything here is recorded in the manifest.

    Attributes:
        image_size: side of the square images written.
        preprocess: ``crop`` (black border off, resize, pad), ``btgraham`` or ``none``.
        num_shards: shards of the largest split (others proportional, at least one); None
            gives about ``IMAGES_PER_SHARD`` images per shard.
        val_fraction: patients moved from train to validation where the source has none.
        withhold_labels: patients moved from train (after validation is carved) to the
            ``unlabelled`` split with their grades dropped, to study training on few grades.
        seed: fixes the validation split and the order of examples within each split.
        image_format: ``jpeg`` or ``png``.
        jpeg_quality: 1-100.
        max_megapixels: inputs whose header declares more are rejected before decoding (16-bit
            images count twice; see ``fundus.decode``).
        near_duplicate_distance: for sources without patient ids whose photographs repeat
            (``Source.near_duplicates``), training images whose perceptual hashes differ in at
            most this many of their bits are kept in one split (``near_duplicates``); None
            turns the grouping off.
    """

    image_size: int = 224
    preprocess: str = "crop"
    num_shards: int | None = None
    val_fraction: float = 0.1
    withhold_labels: float = 0.0
    seed: int = 0
    image_format: str = "jpeg"
    jpeg_quality: int = 95
    max_megapixels: float = fundus.DEFAULT_MAX_MEGAPIXELS
    near_duplicate_distance: int | None = near_duplicates.DEFAULT_DISTANCE

    def check(self) -> None:
        if not 32 <= self.image_size <= 4096:
            raise EffdrError(f"--image_size={self.image_size}: choose 32..4096")
        if self.preprocess not in fundus.PREPROCESS_MODES:
            modes = ", ".join(fundus.PREPROCESS_MODES)
            raise EffdrError(f"--preprocess={self.preprocess}: choose one of {modes}")
        if not 0 <= self.val_fraction < 1:
            raise EffdrError(f"--val_fraction={self.val_fraction}: choose 0 <= f < 1")
        if not 0 <= self.withhold_labels < 1:
            raise EffdrError(f"--withhold_labels={self.withhold_labels}: choose 0 <= f < 1")
        if self.num_shards is not None and self.num_shards < 1:
            raise EffdrError(f"--num_shards={self.num_shards}: need at least 1")
        if self.image_format not in ("jpeg", "png"):
            raise EffdrError(f"--image_format={self.image_format}: choose jpeg or png")
        if not 1 <= self.jpeg_quality <= 100:
            raise EffdrError(f"--jpeg_quality={self.jpeg_quality}: choose 1..100")
        if not self.max_megapixels > 0:  # NaN too
            raise EffdrError(f"--max_megapixels={self.max_megapixels}: choose a number above 0")
        distance = self.near_duplicate_distance
        if distance is not None and not 0 <= distance <= near_duplicates.HASH_BITS // 2:
            raise EffdrError(
                f"--near_duplicate_distance={distance}: choose 0..{near_duplicates.HASH_BITS // 2}"
            )


@dataclasses.dataclass
class Shard:
    name: str
    split: str
    records: list[Record]


# --------------------------------------------------------------------------------------------
# Planning


def drop_duplicates(records: list[Record]) -> tuple[list[Record], list[Reject]]:
    """Keeps the first record of every id; later ones are rejected, naming the first."""
    first, kept, rejects = {}, [], []
    for r in records:
        if r.id in first:
            rejects.append(Reject(r.path, f"duplicate id {r.id!r} (first seen at {first[r.id]})"))
        else:
            first[r.id] = r.path
            kept.append(r)
    return kept, rejects


# Splits whose shards each hold one class, so the input pipeline can read one stream per class
# and rebalance them without reading any record it does not emit.
CLASS_PARTITIONED_SPLITS = ("train",)


def _shard_count(n: int, num_shards: int | None, largest: int) -> int:
    if num_shards is None:
        wanted = math.ceil(n / IMAGES_PER_SHARD)
    else:
        wanted = round(num_shards * n / largest)
    return min(n, max(1, wanted))


def plan_shards(records: list[Record], num_shards: int | None, seed: int) -> list[Shard]:
    """Deterministic order within each split, cut into contiguous shards.

    Training shards are class-pure: each class gets shards in proportion to its count (at
    least one), numbered within the split in class order. Other splits mix classes.
    """
    by_split = collections.defaultdict(list)
    for r in records:
        by_split[r.split].append(r)
    largest = max((len(v) for v in by_split.values()), default=0)
    plan = []
    for split in sorted(by_split, key=SPLITS.index):
        members = sorted(by_split[split], key=lambda r: r.id)
        order = np.random.default_rng([seed, 202, SPLITS.index(split)]).permutation(len(members))
        members = [members[i] for i in order]
        if split in CLASS_PARTITIONED_SPLITS:
            groups = [
                [r for r in members if r.label == c] for c in sorted({r.label for r in members})
            ]
            total = _shard_count(len(members), num_shards, largest)
            counts = [min(len(g), max(1, round(total * len(g) / len(members)))) for g in groups]
        else:
            groups = [members]
            counts = [_shard_count(len(members), num_shards, largest)]
        n = sum(counts)
        index = 0
        for group, count in zip(groups, counts, strict=True):
            for chunk in np.array_split(np.arange(len(group)), count):
                name = f"{split}-{index:05d}-of-{n:05d}.tfrecord"
                plan.append(Shard(name, split, [group[j] for j in chunk]))
                index += 1
    return plan


# --------------------------------------------------------------------------------------------
# Work done in worker processes: OpenCV only, no TensorFlow.

_WORKER: dict = {}


def _init_worker(source: Source, options: BuildOptions) -> None:
    _WORKER["source"], _WORKER["options"] = source, options


def _process(record: Record) -> tuple:
    """("ok", encoded bytes, height, width) or ("reject", reason) for one record."""
    source, options = _WORKER["source"], _WORKER["options"]
    try:
        # The disc spans roughly the shorter side: keep a margin above the output size.
        image = source.load(
            record,
            min_side=int(DECODE_MARGIN * options.image_size),
            max_pixels=options.max_megapixels * 1e6,
        )
        image = fundus.preprocess(image, options.preprocess, options.image_size)
        data = fundus.encode(image, options.image_format, options.jpeg_quality)
        return ("ok", data, image.shape[0], image.shape[1])
    except Exception as e:  # noqa: BLE001 - a bad input must never stop the build
        return ("reject", fundus.describe_failure(e))


def _hash(record: Record) -> bytes | None:
    """The perceptual hash of one record's image, or None if it cannot be read (the build
    itself then rejects it, with the reason)."""
    source, options = _WORKER["source"], _WORKER["options"]
    try:
        image = source.load(
            record,
            min_side=near_duplicates.DECODE_SIDE,
            max_pixels=options.max_megapixels * 1e6,
        )
        return near_duplicates.image_hash(image)
    except Exception:  # noqa: BLE001 - reported when the build reads it again
        return None


def _hash_locally(
    candidates: list[Record], source: Source, options: BuildOptions, *, workers: int, progress: bool
) -> list[bytes | None]:
    """``_hash`` of each candidate, in their order, in ``workers`` processes."""
    pool = None
    if workers > 1 and len(candidates) > 1:
        pool = concurrent.futures.ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(source, options),
        )
        results = pool.map(_hash, candidates, chunksize=8)
    else:
        _init_worker(source, options)
        results = map(_hash, candidates)
    from tqdm import tqdm

    try:
        return list(
            tqdm(results, total=len(candidates), unit="img", desc="hashing", disable=not progress)
        )
    except concurrent.futures.process.BrokenProcessPool as e:
        raise EffdrError(
            f"{source.data_dir}: a worker died while hashing images for near-duplicates; use "
            "--workers=1 to find the image at fault"
        ) from e
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def group_near_duplicates(
    records: list[Record],
    source: Source,
    options: BuildOptions,
    *,
    workers: int,
    progress: bool,
    runner: str = "local",
    beam_options=None,
) -> tuple[list[Record], dict | None]:
    """Gives the training photographs of each near-duplicate cluster one patient id.

    Only for a source that declares its photographs may repeat without a patient id to tie
    them (``Source.near_duplicates``): each training image without a patient id is decoded at
    a reduced size and hashed (``near_duplicates``); the images of a cluster then share the id
    of its first, so validation is carved with them together and evaluation counts them as one
    patient. Grades are never changed: clusters whose grades disagree are counted and listed.

    Args:
        records: the records to group.
        source: where their images are loaded from.
        options: the build's options (the pixel budget and the distance).
        workers: hashing processes for ``runner="local"``.
        progress: show a progress bar (``runner="local"``).
        runner: ``local`` hashes in a process pool; ``beam`` in a Beam pipeline run with
            ``beam_options`` (``effdr_tf.data.beam.hash_images``). Both give the same hashes.
        beam_options: ``PipelineOptions`` for ``runner="beam"``.

    Returns:
        The records, and what was found (for the manifest), None where nothing was hashed.
    """
    distance = options.near_duplicate_distance
    if distance is None or not source.near_duplicates:
        return records, None
    candidates = [r for r in records if r.split == "train" and not r.patient_id]
    if runner == "beam":
        from effdr_tf.data import beam

        values = beam.hash_images(candidates, source, options, beam_options)
    else:
        values = _hash_locally(candidates, source, options, workers=workers, progress=progress)
    hashes = {
        record.id: value
        for record, value in zip(candidates, values, strict=True)
        if value is not None
    }
    groups = near_duplicates.clusters(hashes, distance)
    cluster_of = {key: group[0] for group in groups for key in group}
    grade = {r.id: r.label for r in candidates}
    conflicts = [g for g in groups if len({grade[k] for k in g}) > 1]
    info = {
        "hash": near_duplicates.HASH_NAME,
        "distance": distance,
        "hashed": len(hashes),
        "clusters": len(groups),
        "images": sum(len(g) for g in groups),
        "grade_conflicts": len(conflicts),
        "groups": [{"ids": g, "grades": [grade[k] for k in g]} for g in groups],
    }
    records = [
        dataclasses.replace(r, patient_id=cluster_of[r.id]) if r.id in cluster_of else r
        for r in records
    ]
    return records, info


# --------------------------------------------------------------------------------------------
# Writing


def _example(record: Record, data: bytes, height: int, width: int, source_name: str, fmt: str):
    import tensorflow as tf

    def b(value):
        return tf.train.Feature(
            bytes_list=tf.train.BytesList(
                value=[value.encode() if isinstance(value, str) else value]
            )
        )

    def i(value):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))

    return tf.train.Example(
        features=tf.train.Features(
            feature={
                constants.FEATURE_IMAGE: b(data),
                constants.FEATURE_FORMAT: b(fmt),
                constants.FEATURE_HEIGHT: i(height),
                constants.FEATURE_WIDTH: i(width),
                constants.FEATURE_LABEL: i(record.label),
                constants.FEATURE_ID: b(record.id),
                constants.FEATURE_PATIENT_ID: b(record.patient_id),
                constants.FEATURE_EYE: b(record.eye),
                constants.FEATURE_SOURCE: b(source_name),
            }
        )
    ).SerializeToString(deterministic=True)  # map order would follow the hash seed


def _write_text(path: str, text: str) -> None:
    """Writes under a temporary name, then renames: readers never see half a file."""
    import tensorflow as tf

    tmp = f"{path}.tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(text)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def _write_failure(output_dir: str, name: str, error: BaseException) -> str:
    """One line for a write that failed (a full disk, a quota, a revoked bucket permission):
    finished shards are kept, so the same command resumes once the cause is fixed."""
    reason = getattr(error, "message", None) or str(error) or type(error).__name__
    return (
        f"{os.path.join(output_dir, name)}: cannot write: {reason.strip().splitlines()[0]}; "
        "finished shards are kept: free space (or fix access) and run the same command again"
    )


def write_shard(
    shard: Shard, results: Iterable[tuple], source_name: str, options: BuildOptions, output_dir: str
) -> dict:
    """Writes one shard from its records' ``_process`` results, given in the shard's order.

    The examples go to ``{name}.tmp``; the shard's record (counts, rejects, size, sha256) is
    written to ``.parts/{name}.json`` before the file is renamed to its name, so a shard is
    finished exactly when both exist. Nothing here depends on the process or the moment it
    runs: the same inputs write the same bytes, so a shard written again (a resumed build, a
    retried Beam bundle) is the same file.

    Args:
        shard: what to write, from ``plan_shards``.
        results: one ``_process`` result per record of ``shard``, in the same order.
        source_name: written as each example's source.
        options: the build's options (the image format).
        output_dir: the output folder (local or ``gs://``).

    Returns:
        The shard's record, as written to ``.parts``.
    """
    import tensorflow as tf

    path = os.path.join(output_dir, shard.name)
    counts = collections.Counter()
    rejects = []
    with tf.io.TFRecordWriter(f"{path}.tmp") as writer:
        for record, result in zip(shard.records, results, strict=True):
            if result[0] == "ok":
                _, data, h, w = result
                writer.write(_example(record, data, h, w, source_name, options.image_format))
                counts[record.label] += 1
            else:
                rejects.append([record.path, result[1]])
    part = {
        "name": shard.name,
        "split": shard.split,
        "count": sum(counts.values()),
        "class_counts": {str(k): v for k, v in sorted(counts.items())},
        "sha256": fileio.sha256(f"{path}.tmp"),
        "bytes": tf.io.gfile.stat(f"{path}.tmp").length,
        "rejects": rejects,
    }
    _write_text(os.path.join(output_dir, PARTS, f"{shard.name}.json"), json.dumps(part))
    tf.io.gfile.rename(f"{path}.tmp", path, overwrite=True)
    return part


def _write_shards(pending, source, options, output_dir, workers, progress) -> None:
    """Writes the pending shards here: ``workers`` processes preprocess, this one writes."""
    import tensorflow as tf
    from tqdm import tqdm

    records = [r for shard in pending for r in shard.records]
    if not records:
        return
    pool = None
    if workers > 1:
        # spawn: the main process has TensorFlow loaded, which must not be forked. A worker
        # that dies (a decoder crash) breaks the pool with an error instead of a hang.
        pool = concurrent.futures.ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(source, options),
        )
        results = pool.map(_process, records, chunksize=2)
    else:
        _init_worker(source, options)
        results = map(_process, records)
    bar = tqdm(total=len(records), unit="img", desc="building", disable=not progress)

    def taken(n):
        # The next n results, in order: the pool works ahead while a shard is written.
        for _ in range(n):
            yield next(results)
            bar.update(1)

    shard = None
    try:
        for shard in pending:
            write_shard(shard, taken(len(shard.records)), source.name, options, output_dir)
    except concurrent.futures.process.BrokenProcessPool as e:
        raise EffdrError(
            f"{output_dir}: a preprocessing worker died while writing {shard.name}; run the "
            "same command again to resume, or use --workers=1 to find the image at fault"
        ) from e
    except (tf.errors.OpError, OSError) as e:
        raise EffdrError(_write_failure(output_dir, shard.name, e)) from e
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


# Names the builder writes: a shard from ``plan_shards``. Names read back from a manifest or
# params.json must match, so a tampered file can never make --overwrite delete anything else.
SHARD_NAME = re.compile(r"[a-z_]+-\d{5}-of-\d{5}\.tfrecord")
PARAMS = "params.json"
LEAVE_IT = "move it away or choose another --output_dir"


def _read_json(path: str):
    """The JSON in ``path``; EffdrError naming the file if it cannot be read or parsed."""
    import tensorflow as tf

    try:
        with tf.io.gfile.GFile(path) as f:
            return json.loads(f.read())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EffdrError(
            f"{path}: not valid JSON, so not written by this builder; {LEAVE_IT}"
        ) from e
    except tf.errors.OpError as e:
        raise EffdrError(f"{path}: cannot read: {e.message}") from e


def _manifest_problem(manifest) -> str | None:
    """Why ``manifest`` is not a complete build of ours, or None."""
    if not isinstance(manifest, dict):
        return "not a JSON object"
    created_by = manifest.get("created_by")
    if not isinstance(created_by, str) or not created_by.startswith("effdr_tf "):
        return f"created_by is {created_by!r}, not effdr_tf"
    if manifest.get("format_version") != MANIFEST_VERSION:
        return f"format_version {manifest.get('format_version')!r}, not {MANIFEST_VERSION}"
    missing = [
        k for k in ("splits", "num_seen", "num_written", "num_rejected") if k not in manifest
    ]
    if missing:
        return f"no {', '.join(missing)}"
    try:
        for info in manifest["splits"].values():
            if not isinstance(info["count"], int) or not isinstance(info["class_counts"], dict):
                return "splits without counts"
            for shard in info["shards"]:
                if not isinstance(shard["name"], str) or not SHARD_NAME.fullmatch(shard["name"]):
                    return f"shard name {shard['name']!r} is not one this builder writes"
    except (AttributeError, KeyError, TypeError):
        return "splits without counts and shards"
    return None


def _read_manifest(path: str) -> dict | None:
    """Our manifest at ``path``, None if there is none; any other file there is an error."""
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        return None
    manifest = _read_json(path)
    problem = _manifest_problem(manifest)
    if problem:
        raise EffdrError(f"{path}: {problem}, so not written by this builder; {LEAVE_IT}")
    return manifest


def _read_params(parts_dir: str) -> dict | None:
    """The settings of the unfinished build in ``parts_dir``, None if none was started there.

    A ``.parts`` folder holding anything but records this builder writes is not ours: an error.
    """
    import tensorflow as tf

    if not tf.io.gfile.exists(parts_dir):
        return None
    path = os.path.join(parts_dir, PARAMS)
    if not tf.io.gfile.isdir(parts_dir):
        raise EffdrError(f"{parts_dir}: not a folder this builder made; {LEAVE_IT}")
    part = re.compile(rf"({SHARD_NAME.pattern}\.json|{re.escape(PARAMS)})(\.tmp)?")
    strangers = [n for n in tf.io.gfile.listdir(parts_dir) if not part.fullmatch(n)]
    if strangers:
        raise EffdrError(
            f"{os.path.join(parts_dir, strangers[0])}: not written by this builder; {LEAVE_IT}"
        )
    if not tf.io.gfile.exists(path):
        return None  # killed before params.json was in place: nothing of it can be reused
    params = _read_json(path)
    keys = ("source", "options", "shards", "records")
    if not (
        isinstance(params, dict)
        and all(k in params for k in keys)
        and isinstance(params["shards"], list)
        and all(isinstance(n, str) and SHARD_NAME.fullmatch(n) for n in params["shards"])
    ):
        raise EffdrError(f"{path}: not the record of a build by this builder; {LEAVE_IT}")
    return params


def _our_files(
    output_dir: str, present: set[str], manifest: dict | None, params: dict | None
) -> list[str]:
    """Files of ``present`` (the names in ``output_dir``) that an earlier build here wrote, by
    its manifest or params.json.

    Anything else in the folder (the images themselves when it is also the data dir) belongs
    to someone else and is never removed or replaced.
    """
    names = set()
    if manifest is not None:
        names.update(s["name"] for info in manifest["splits"].values() for s in info["shards"])
    if params is not None:
        names.update(params["shards"])
    if manifest is not None or params is not None:
        names.update((MANIFEST, REJECTS))
    names.update([f"{n}.tmp" for n in names])
    return [os.path.join(output_dir, n) for n in sorted(names & present)]


def _listdir(folder: str) -> set[str]:
    """The names in ``folder`` (folders without their trailing "/" on object stores)."""
    import tensorflow as tf

    try:
        names = tf.io.gfile.listdir(folder) if tf.io.gfile.isdir(folder) else []
        return {n.rstrip("/") for n in names}
    except tf.errors.OpError as e:
        raise EffdrError(f"{folder}: cannot list the output folder: {e.message}") from e


def _refuse_foreign_folder(output_dir: str, present: set[str], data_dir: str) -> None:
    """A folder that holds files but no build of ours is most likely a mistyped --output_dir:
    refused unless ``--overwrite`` says to build beside those files (which stay), or it is the
    data dir itself, where writing beside the images is what was asked for."""
    others = sorted(present - {PARTS})
    if not others or (
        data_dir
        and not fileio.is_remote(output_dir)
        and os.path.realpath(output_dir) == os.path.realpath(data_dir)
    ):
        return
    more = f" and {len(others) - 1} more" if len(others) > 1 else ""
    raise EffdrError(
        f"{output_dir}: not empty ({others[0]}{more}) and not a build of this builder; choose "
        "a new or empty --output_dir, or pass --overwrite to build beside those files (they "
        "are kept)"
    )


def _refuse_strangers(
    output_dir: str, present: set[str], plan: list[Shard], ours: list[str]
) -> None:
    """Stops the build, before anything is written, if a file someone else put in the folder
    has a name this build would write."""
    wanted = {s.name for s in plan} | {MANIFEST, REJECTS}
    wanted |= {f"{n}.tmp" for n in wanted}
    mine = {os.path.basename(p) for p in ours}
    for name in sorted(wanted & present - mine):
        raise EffdrError(
            f"{os.path.join(output_dir, name)}: exists and was not written by a build in this "
            f"folder (no manifest.json or .parts/params.json names it); {LEAVE_IT}"
        )


def build(
    source: Source,
    output_dir: str,
    options: BuildOptions,
    *,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    runner: str = "local",
    beam_options=None,
) -> dict:
    """Builds (or finishes building) the TFRecords of ``source`` in ``output_dir``.

    The folder may hold other files (it may be the data dir itself): the build writes beside
    them and never removes or replaces a file it did not write. It refuses, before writing
    anything, a folder whose manifest.json or .parts is not its own, and one holding someone
    else's file under a name it would write. ``overwrite`` removes only what the earlier
    build's manifest or params.json names.

    Args:
        source: the dataset.
        output_dir: where the shards go (local or ``gs://``).
        options: how to build.
        workers: preprocessing processes for ``runner="local"``, and the local Beam runner's
            worker processes for ``runner="beam"`` without ``beam_options``.
        overwrite: rebuild a complete output folder.
        progress: show progress bars (``runner="local"``, on a terminal).
        runner: ``local`` (a process pool here) or ``beam``: the near-duplicate hashing and
            the pending shards run as Apache Beam pipelines (``effdr_tf.data.beam``); the
            files written are the same. Which runner wrote a shard does not matter to a
            resumed build.
        beam_options: ``PipelineOptions`` (``beam_options.pipeline_options``) for
            ``runner="beam"``; None runs here (FnApiRunner) with ``workers`` processes.

    Returns:
        The manifest.
    """
    import tensorflow as tf

    if runner not in RUNNERS:
        raise EffdrError(f"--runner={runner}: choose one of {', '.join(RUNNERS)}")
    if runner == "beam" and beam_options is None:
        # Here, before the scan: a missing Beam install is one line before any work.
        beam_options = pipeline_options(None, workers)
    elif runner == "local" and beam_options is not None:
        raise EffdrError("--beam_pipeline_options: only used with --runner=beam")
    # A progress bar redraws itself with carriage returns: in a log file (stderr redirected)
    # it is noise, and the summary printed at the end says the same.
    progress = progress and sys.stderr.isatty()
    options.check()
    source.check()
    manifest_path = os.path.join(output_dir, MANIFEST)
    parts_dir = os.path.join(output_dir, PARTS)
    params_path = os.path.join(parts_dir, PARAMS)
    manifest = _read_manifest(manifest_path)
    if manifest is not None and not overwrite:
        log.info("%s is complete (manifest.json exists); pass --overwrite to rebuild", output_dir)
        return manifest
    before = _read_params(parts_dir)

    # Scanned before anything is written: a label file that cannot be read stops the build
    # with the output folder as it was.
    items = list(source.scan())
    records = [r for r in items if isinstance(r, Record)]
    rejects = [r for r in items if isinstance(r, Reject)]
    # Grades and the unlabelled split go together: a photograph without a grade anywhere else
    # would be trained on as class -1.
    misplaced = [r for r in records if (r.label == UNKNOWN_LABEL) != (r.split == UNLABELLED)]
    if misplaced:
        records = [r for r in records if r not in set(misplaced)]
        rejects += [
            Reject(r.path, f"label {r.label} in split {r.split!r}: only the {UNLABELLED!r} "
                   "split holds photographs without a grade")
            for r in misplaced
        ]  # fmt: skip
    records, duplicates = drop_duplicates(records)
    rejects += duplicates
    warnings = source.warnings()
    records, grouping = group_near_duplicates(
        records,
        source,
        options,
        workers=workers,
        progress=progress,
        runner=runner,
        beam_options=beam_options,
    )
    if grouping and grouping["grade_conflicts"]:
        warnings.append(
            f"{grouping['grade_conflicts']} near-duplicate cluster(s) hold different grades "
            "(kept as graded; listed under near_duplicates in manifest.json)"
        )
    if options.val_fraction > 0 and not any(r.split == "validation" for r in records):
        warnings += splits.carving_warnings(records, options.val_fraction)
        records = splits.carve_validation(records, options.val_fraction, options.seed)
    no_validation = splits.empty_validation_reason(records, options.val_fraction)
    records = splits.withhold_labels(records, options.withhold_labels, options.seed)
    plan = plan_shards(records, options.num_shards, options.seed)

    params = {
        "source": source.describe(),
        "options": dataclasses.asdict(options),
        "shards": [s.name for s in plan],
        "records": hashlib.sha256(
            "\n".join(f"{s.name}|{r.id}|{r.label}" for s in plan for r in s.records).encode()
        ).hexdigest(),
    }
    if before is not None and before != params and not overwrite:
        changed = sorted(k for k in params if before.get(k) != params[k])
        raise EffdrError(
            f"{output_dir}: holds an unfinished build with other {' and '.join(changed)}; "
            "run it with the same settings and inputs, or pass --overwrite to start again"
        )
    present = _listdir(output_dir)  # listed once for every check (a bucket listing is slow)
    ours = _our_files(output_dir, present, manifest, before)
    if manifest is None and before is None and not overwrite:
        _refuse_foreign_folder(output_dir, present, source.data_dir)
    _refuse_strangers(output_dir, present, plan, ours)
    if overwrite or before is None:
        # The manifest goes last: killed halfway, what is left is still named by it.
        for path in sorted(ours, key=lambda p: os.path.basename(p) == MANIFEST):
            tf.io.gfile.remove(path)
        if tf.io.gfile.exists(parts_dir):
            tf.io.gfile.rmtree(parts_dir)
    try:
        tf.io.gfile.makedirs(parts_dir)
    except tf.errors.OpError as e:
        raise EffdrError(f"{output_dir}: cannot create the output folder: {e.message}") from e
    if overwrite or before is None:
        _write_text(params_path, json.dumps(params))
    for path in _our_files(output_dir, _listdir(output_dir), None, params):
        if path.endswith(".tmp"):
            tf.io.gfile.remove(path)

    def finished(shard):
        return tf.io.gfile.exists(os.path.join(output_dir, shard.name)) and tf.io.gfile.exists(
            os.path.join(parts_dir, f"{shard.name}.json")
        )

    pending = [s for s in plan if not finished(s)]
    if len(pending) < len(plan):
        log.info("resuming: %d of %d shards already complete", len(plan) - len(pending), len(plan))
    if runner == "beam":
        from effdr_tf.data import beam

        beam.write_shards(pending, source, options, output_dir, beam_options)
        # Workers on other machines write where they can: a local --output_dir there is not
        # this machine's folder, and the pipeline succeeds without a shard arriving here.
        missing = [s.name for s in pending if not finished(s)]
        if missing:
            raise EffdrError(
                f"{os.path.join(output_dir, missing[0])}: not written although the pipeline "
                f"succeeded ({len(missing)} shard(s) missing): workers on other machines need "
                "an --output_dir they share with this one (gs://...)"
            )
    else:
        _write_shards(pending, source, options, output_dir, workers, progress)

    parts = []
    for shard in plan:
        with tf.io.gfile.GFile(os.path.join(parts_dir, f"{shard.name}.json")) as f:
            parts.append(json.load(f))
    if no_validation is None and not any(p["count"] for p in parts if p["split"] == "validation"):
        no_validation = f"every validation image was rejected (see {REJECTS})"
    if no_validation is not None:
        warnings.append(splits.empty_validation_warning(no_validation))
    for warning in warnings:
        log.warning("%s: %s", output_dir, warning)
    manifest = _manifest(source, options, parts, rejects, seen=len(items))
    manifest["near_duplicates"] = grouping
    manifest["warnings"] = warnings
    reject_rows = sorted(
        [(r.path, r.reason) for r in rejects] + [tuple(x) for p in parts for x in p["rejects"]]
    )
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "reason"])
    writer.writerows(reject_rows)
    _write_text(os.path.join(output_dir, REJECTS), buf.getvalue())
    _write_text(manifest_path, json.dumps(manifest, indent=1) + "\n")
    tf.io.gfile.rmtree(parts_dir)
    return manifest


def _manifest(source, options, parts, rejects, seen) -> dict:
    split_info = {}
    for part in parts:
        info = split_info.setdefault(
            part["split"],
            {"count": 0, "class_counts": collections.Counter(), "shards": []},
        )
        info["count"] += part["count"]
        info["class_counts"].update(part["class_counts"])
        info["shards"].append(
            {
                "name": part["name"],
                "count": part["count"],
                "bytes": part["bytes"],
                "sha256": part["sha256"],
                "class_counts": part["class_counts"],
            }
        )
    for info in split_info.values():
        info["class_counts"] = {
            str(k): info["class_counts"].get(str(k), 0) for k in range(source.num_classes)
        }
    written = sum(p["count"] for p in parts)
    rejected = len(rejects) + sum(len(p["rejects"]) for p in parts)
    assert written + rejected == seen, (written, rejected, seen)
    return {
        "format_version": MANIFEST_VERSION,
        "created_by": f"effdr_tf {effdr_tf.__version__}",
        "source": source.describe(),
        "num_classes": source.num_classes,
        "image_size": options.image_size,
        "preprocessing": {
            "mode": options.preprocess,
            "image_size": options.image_size,
            "image_format": options.image_format,
            "jpeg_quality": options.jpeg_quality if options.image_format == "jpeg" else None,
            "max_megapixels": options.max_megapixels,
        },
        "seed": options.seed,
        "val_fraction": options.val_fraction,
        "withhold_labels": options.withhold_labels,
        "splits": split_info,
        "num_seen": seen,
        "num_written": written,
        "num_rejected": rejected,
    }


def summary(manifest: dict, output_dir: str) -> str:
    """A few lines for the terminal: what was written where, and what was rejected."""
    lines = [f"{output_dir}: {manifest['num_written']} images of {manifest['num_seen']} inputs"]
    for split, info in manifest["splits"].items():
        counts = " ".join(f"{k}:{v}" for k, v in info["class_counts"].items() if v)
        lines.append(
            f"  {split:<13} {info['count']:>7} in {len(info['shards'])} shard(s)  {counts}"
        )
    if manifest["num_rejected"]:
        lines.append(
            f"  rejected {manifest['num_rejected']}: see {os.path.join(output_dir, REJECTS)}"
        )
    grouping = manifest.get("near_duplicates")
    if grouping:
        lines.append(
            f"  near-duplicates: {grouping['images']} of {grouping['hashed']} training images "
            f"in {grouping['clusters']} cluster(s) kept together ({grouping['hash']} within "
            f"{grouping['distance']} bits), {grouping['grade_conflicts']} with different grades"
        )
    lines += [f"  warning: {w}" for w in manifest.get("warnings", [])]
    return "\n".join(lines)
