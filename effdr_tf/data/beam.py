"""The builder's Apache Beam pipelines: ``tfrecord_builder.py --runner=beam``.

``builder.build`` plans, checks what an earlier build left and writes the manifest whatever
the runner; with ``runner="beam"`` it hands the two steps that decode images to the pipelines
here, which call the same functions the local builder calls:

    hash_images:   Create(index, record) -> Reshuffle -> builder._hash -> WriteToText (temp)
    write_shards:  Create(shard name, position, record) -> Reshuffle -> builder._process
                   -> GroupByKey(shard name) -> sort by position -> builder.write_shard

Each worker sets up the builder's per-process state (``builder._init_worker``) once per
DoFn instance, in ``setup``. A shard is written by one ``write_shard`` call from its records'
results in plan order, so its bytes depend only on its inputs: a retried bundle (the
BundleBasedDirectRunner and Dataflow retry failed bundles) writes the same file again, and
the shards equal the local builder's byte for byte. Shards already finished (the file and its
``.parts`` record) are not in the pipeline. Paths go through ``tf.io.gfile``: ``gs://`` output
works where the workers can write it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import typing
import uuid

from effdr_tf.beam_options import import_beam
from effdr_tf.data import builder
from effdr_tf.errors import EffdrError

# Beam is an optional extra: ``builder`` imports this module only for ``runner="beam"``, and
# a missing install is then one error line with the command to add it.
beam = import_beam()
from apache_beam.runners.runner import PipelineState  # noqa: E402

log = logging.getLogger(__name__)


class _WithWorkerState(beam.DoFn):
    """A DoFn that calls the builder's per-image functions in a worker process."""

    def __init__(self, source, options: builder.BuildOptions):
        self._source = source
        self._options = options

    def setup(self):
        builder._init_worker(self._source, self._options)


class _Hash(_WithWorkerState):
    """(index, record) -> one JSON line ``[index, hex hash or null]``."""

    def process(self, element):
        index, record = element
        value = builder._hash(record)
        # The candidate's index, not its id: ids may hold any character, a newline too.
        yield json.dumps([index, None if value is None else value.hex()])


class _Preprocess(_WithWorkerState):
    """(shard name, position, record) -> (shard name, (position, record, result))."""

    def process(self, element):
        name, position, record = element
        result = builder._process(record)
        # The result holds the encoded image: the record's own copy (CIFAR keeps its image in
        # the record) need not travel through the shuffle as well.
        yield name, (position, dataclasses.replace(record, data=None), result)


class _WriteShard(beam.DoFn):
    """(shard name, its (position, record, result)s) -> the shard and its ``.parts`` record.

    Outputs nothing: the main process reads the ``.parts`` records once the pipeline is done.
    """

    def __init__(self, splits: dict[str, str], source_name: str, options, output_dir: str):
        self._splits = splits
        self._source_name = source_name
        self._options = options
        self._output_dir = output_dir

    def process(self, element):
        name, items = element
        # The shuffle delivers a shard's images in any order: the plan's order is restored,
        # so the file is the same whichever worker wrote it and however often.
        items = sorted(items, key=lambda item: item[0])
        shard = builder.Shard(name, self._splits[name], [record for _, record, _ in items])
        builder.write_shard(
            shard,
            [result for _, _, result in items],
            self._source_name,
            self._options,
            self._output_dir,
        )
        return ()


def _first_line(error: BaseException) -> str:
    """The gist of a pipeline failure: runners wrap the worker's traceback in the message,
    whose last "SomeError: ..." line is the cause."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    causes = [
        line
        for line in lines
        if not line.startswith(("File ", "Traceback", "During handling", "The above exception"))
        and ("Error" in line.split(":", 1)[0] or "Exception" in line.split(":", 1)[0])
    ]
    reason = (causes or lines or [type(error).__name__])[-1]
    return reason if len(reason) <= 300 else reason[:297] + "..."


def _run(pipeline, output_dir: str, what: str, kept: str) -> None:
    """Runs ``pipeline`` to the end; a failure is one ``EffdrError`` line."""
    try:
        state = pipeline.run().wait_until_finish()
    except Exception as e:  # noqa: BLE001 - any worker error reaches the user as one line
        raise EffdrError(
            f"{output_dir}: the Beam pipeline failed while {what} ({_first_line(e)}); {kept}"
        ) from e
    # Runners whose wait returns the state (not raising) on failure, or with a timeout.
    if state not in (PipelineState.DONE, None):
        raise EffdrError(f"{output_dir}: the Beam pipeline ended {state} while {what}; {kept}")


def _temp_folder(pipeline_options) -> str:
    """A new folder for a pipeline's temporary files: under ``--temp_location`` when given
    (Dataflow requires one, and its workers can write it), else a local temporary folder,
    which workers on this machine (the local runner's) share with it."""
    import tensorflow as tf

    base = pipeline_options.get_all_options().get("temp_location")
    if not base:
        return tempfile.mkdtemp(prefix="effdr-hashes-")
    folder = os.path.join(base, f"effdr-hashes-{uuid.uuid4().hex}")
    tf.io.gfile.makedirs(folder)
    return folder


def hash_images(candidates, source, options, pipeline_options) -> list[bytes | None]:
    """``builder._hash`` of each candidate, in their order, computed by a Beam pipeline.

    The workers write ``[index, hex]`` lines (``WriteToText``) to a temporary folder
    (``_temp_folder``) that this process reads back and removes.

    Raises:
        EffdrError: the pipeline failed, or its results are not where this process can read
            them (workers elsewhere without a shared ``--temp_location``).
    """
    import tensorflow as tf

    if not candidates:
        return []
    folder = _temp_folder(pipeline_options)
    prefix = os.path.join(folder, "hashes")
    kept = "nothing was written yet: run the same command again"
    try:
        pipeline = beam.Pipeline(options=pipeline_options)
        _ = (
            pipeline
            | "Candidates" >> beam.Create(list(enumerate(candidates)), reshuffle=False)
            | "Spread" >> beam.Reshuffle()
            | "Hash" >> beam.ParDo(_Hash(source, options))
            | "Write" >> beam.io.WriteToText(prefix, file_name_suffix=".jsonl")
        )
        log.info("hashing %d images on Beam", len(candidates))
        _run(pipeline, source.data_dir or "near-duplicate hashing", "hashing images", kept)
        values: dict[int, bytes | None] = {}
        for path in tf.io.gfile.glob(f"{prefix}*.jsonl"):
            with tf.io.gfile.GFile(path) as f:
                for line in f:
                    index, value = json.loads(line)
                    values[index] = None if value is None else bytes.fromhex(value)
    finally:
        if tf.io.gfile.exists(folder):
            tf.io.gfile.rmtree(folder)
    if len(values) != len(candidates):
        raise EffdrError(
            f"{folder}: the hashing pipeline succeeded but {len(candidates) - len(values)} of "
            f"{len(candidates)} results are not there: workers on other machines need a "
            "--temp_location they share with this one (gs://...) in --beam_pipeline_options"
        )
    return [values[i] for i in range(len(candidates))]


def write_shards(pending, source, options, output_dir: str, pipeline_options) -> None:
    """Writes the ``pending`` shards of a build with a Beam pipeline (see the module).

    Args:
        pending: the ``builder.Shard``s not yet finished, each with at least one record.
        source: where the images are loaded from (pickled to the workers).
        options: the build's options.
        output_dir: the output folder; its ``.parts`` folder exists.
        pipeline_options: Beam ``PipelineOptions``.

    Raises:
        EffdrError: the pipeline failed; the shards it finished are kept, so the same command
            resumes.
    """
    elements = [(s.name, i, r) for s in pending for i, r in enumerate(s.records)]
    if not elements:
        return
    pipeline = beam.Pipeline(options=pipeline_options)
    # Said, not inferred: Beam infers a fixed-length tuple from ``_process``'s two kinds of
    # result, whose coder then fails on the shorter one (a reject).
    preprocess = beam.ParDo(_Preprocess(source, options)).with_output_types(tuple[str, typing.Any])
    write = _WriteShard({s.name: s.split for s in pending}, source.name, options, output_dir)
    _ = (
        pipeline
        | "Records" >> beam.Create(elements, reshuffle=False)
        | "Spread" >> beam.Reshuffle()
        | "Preprocess" >> preprocess
        | "ByShard" >> beam.GroupByKey()
        | "WriteShard" >> beam.ParDo(write)
    )
    log.info("writing %d shard(s), %d images, on Beam", len(pending), len(elements))
    _run(
        pipeline,
        output_dir,
        "writing shards",
        "finished shards are kept: run the same command again to resume",
    )
