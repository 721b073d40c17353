"""The builder on Apache Beam (``tfrecord_builder.py --runner=beam``): the local builder's files,
byte for byte, whatever the runner, the worker processes, a retried bundle or a resumed build."""

import glob
import os

import pytest

from effdr_tf import fileio
from effdr_tf.data import builder
from effdr_tf.data.sources import make_source
from effdr_tf.errors import EffdrError
from tests import hostile_corpus
from tests.conftest import run_command
from tests.test_command_lines import one_error_line, run_without_tensorflow

pytest.importorskip("apache_beam")

from effdr_tf.beam_options import pipeline_options  # noqa: E402

pytestmark = pytest.mark.beam

# What pipeline_options chooses without a --runner (FnApiRunner: not the DirectRunner, which
# first tries the Prism runner it downloads), spelled out so that each test says what it runs.
TWO_PROCESSES = "--runner=FnApiRunner --direct_num_workers=2 --direct_running_mode=multi_processing"
IN_PROCESS = "--runner=FnApiRunner"  # one worker, in this process; a failed bundle is not retried


def _synthetic():
    source = make_source("synthetic_dr", num_images=40, seed=3, image_size=64)
    return source, builder.BuildOptions(image_size=64, num_shards=4, seed=3)


def _files(output_dir):
    """Every file the build left, by name, as sha256 (hidden ones too: there must be none)."""
    return {
        os.path.basename(p): fileio.sha256(p)
        for p in sorted(glob.glob(os.path.join(output_dir, "*"), include_hidden=True))
    }


def _same_build(got, want, got_dir, want_dir):
    assert got == want  # the manifest: counts, splits, shards with their sha256, rejects
    assert _files(got_dir) == _files(want_dir)  # shards, manifest.json and rejects.csv
    assert not os.path.exists(os.path.join(got_dir, builder.PARTS))


@pytest.mark.slow
@pytest.mark.parametrize("corpus", ["synthetic_dr", "hostile"])
def test_two_worker_processes_write_the_local_builders_files(tmp_path, corpus):
    if corpus == "hostile":
        folder = tmp_path / "corpus"
        hostile_corpus.make_corpus(folder, tmp_path / "outside.jpg")
        source = make_source("folder", str(folder))
        options = builder.BuildOptions(image_size=64, val_fraction=0.0)
    else:
        source, options = _synthetic()
    local, beam = tmp_path / "local", tmp_path / "beam"
    want = builder.build(source, str(local), options, workers=1, progress=False)
    got = builder.build(
        source,
        str(beam),
        options,
        progress=False,
        runner="beam",
        beam_options=pipeline_options(TWO_PROCESSES),
    )
    _same_build(got, want, beam, local)
    if corpus == "hostile":
        assert got["num_rejected"] == 20 and got["num_written"] == 12


def test_near_duplicate_hashing_on_beam_equals_local(tmp_path):
    from tests.test_splits import _aptos

    source = _aptos(tmp_path / "aptos")
    records = [r for r in source.scan() if isinstance(r, builder.Record)]
    options = builder.BuildOptions(image_size=32, image_format="png", val_fraction=0.5)
    want = builder.group_near_duplicates(records, source, options, workers=1, progress=False)
    got = builder.group_near_duplicates(
        records,
        source,
        options,
        workers=1,
        progress=False,
        runner="beam",
        beam_options=pipeline_options(""),
    )
    assert got == want and want[1]["clusters"] == 1
    # The whole build, hashing included, on Beam: the local build's files.
    local = builder.build(source, str(tmp_path / "local"), options, progress=False)
    beam = builder.build(source, str(tmp_path / "beam"), options, progress=False, runner="beam")
    _same_build(beam, local, tmp_path / "beam", tmp_path / "local")


def _first_time(marker) -> bool:
    """True for the one caller that creates ``marker`` (O_EXCL: also across processes)."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def test_a_retried_bundle_writes_the_same_files(tmp_path, monkeypatch):
    """The BundleBasedDirectRunner retries a failed bundle, as Dataflow does: one image fails
    its first preprocessing, and one shard fails halfway through its first writing (its .tmp
    file half written)."""
    source, options = _synthetic()
    local = tmp_path / "local"
    want = builder.build(source, str(local), options, workers=1, progress=False)
    victim = sorted(r.id for r in source.scan())[7]
    shard = want["splits"]["train"]["shards"][1]["name"]
    process, write_shard = builder._process, builder.write_shard

    def failing_process(record):
        if record.id == victim and _first_time(tmp_path / "process-failed"):
            raise RuntimeError(f"injected failure preprocessing {record.id}")
        return process(record)

    def failing_write(shard_, results, *args):
        if shard_.name == shard and _first_time(tmp_path / "write-failed"):
            results = list(results)

            def half(results=results):
                yield from results[: len(results) // 2]
                raise RuntimeError(f"injected failure writing {shard}")

            return write_shard(shard_, half(), *args)
        return write_shard(shard_, results, *args)

    monkeypatch.setattr(builder, "_process", failing_process)
    monkeypatch.setattr(builder, "write_shard", failing_write)
    retried = tmp_path / "retried"
    got = builder.build(
        source,
        str(retried),
        options,
        progress=False,
        runner="beam",
        beam_options=pipeline_options("--runner=BundleBasedDirectRunner"),
    )
    assert (tmp_path / "process-failed").exists() and (tmp_path / "write-failed").exists()
    _same_build(got, want, retried, local)


def test_a_failed_pipeline_keeps_finished_shards_and_the_rerun_writes_only_the_others(
    tmp_path, monkeypatch
):
    source, options = _synthetic()
    clean = tmp_path / "clean"
    want = builder.build(source, str(clean), options, workers=1, progress=False)
    shards = sum(len(info["shards"]) for info in want["splits"].values())
    out = tmp_path / "out"
    in_process = pipeline_options(IN_PROCESS)
    write_shard = builder.write_shard
    written = []

    def failing_last(shard, *args):
        # The last shard fails, as if the job died then: all the others are finished.
        written.append(shard.name)
        if len(written) == shards:
            raise OSError(f"injected failure writing {shard.name}")
        return write_shard(shard, *args)

    monkeypatch.setattr(builder, "write_shard", failing_last)
    with pytest.raises(EffdrError) as failure:
        builder.build(
            source, str(out), options, progress=False, runner="beam", beam_options=in_process
        )
    message = str(failure.value)
    assert "\n" not in message and message.startswith(f"{out}: the Beam pipeline failed")
    assert f"injected failure writing {written[-1]}" in message
    assert "finished shards are kept: run the same command again" in message
    finished = {
        name: (os.stat(out / name).st_ino, os.stat(out / name).st_mtime_ns) for name in written[:-1]
    }
    assert sorted(finished) == sorted(n for n in os.listdir(out) if n.endswith(".tfrecord"))
    assert not (out / "manifest.json").exists()

    written.clear()
    monkeypatch.setattr(builder, "write_shard", lambda shard, *a: written.append(shard.name)
                        or write_shard(shard, *a))  # fmt: skip
    got = builder.build(
        source, str(out), options, progress=False, runner="beam", beam_options=in_process
    )
    assert len(written) == 1 and written[0] not in finished
    assert {
        name: (os.stat(out / name).st_ino, os.stat(out / name).st_mtime_ns) for name in finished
    } == finished
    _same_build(got, want, out, clean)


@pytest.mark.slow
def test_the_command_line_runs_on_beam(tmp_path):
    args = ["--data=synthetic_dr", "--num_images=12", "--image_size=64", "--num_shards=2"]
    result = run_command(
        "tfrecord_builder.py", *args, f"--output_dir={tmp_path / 'beam'}", "--runner=beam",
        "--workers=1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "12 images of 12 inputs" in result.stdout
    source = make_source("synthetic_dr", num_images=12, image_size=64)
    options = builder.BuildOptions(image_size=64, num_shards=2)
    builder.build(source, str(tmp_path / "local"), options, progress=False)
    assert _files(tmp_path / "beam") == _files(tmp_path / "local")


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--runner=beam", "--beam_pipeline_options=--bad_option=1"],
            "--beam_pipeline_options: --bad_option is not an Apache Beam pipeline option",
        ),
        (
            ["--beam_pipeline_options=--direct_num_workers=2"],
            "--beam_pipeline_options needs --runner=beam",
        ),
        (["--runner=spark"], "value should be one of <local|beam>"),
    ],
)
def test_beam_flag_mistakes_are_one_line_before_anything_loads(tmp_path, flags, message):
    out = tmp_path / "out"
    result = run_without_tensorflow("tfrecord_builder.py", f"--output_dir={out}", *flags)
    one_error_line(result, message)
    assert not out.exists()


def test_without_beam_installed_runner_beam_is_one_line(tmp_path):
    out = tmp_path / "out"
    hide = "import runpy, sys; sys.modules['apache_beam'] = None; sys.argv = sys.argv[1:]; "
    hide += "runpy.run_path('tfrecord_builder.py', run_name='__main__')"
    result = run_command("-c", hide, "tfrecord_builder.py", f"--output_dir={out}", "--runner=beam")
    one_error_line(result, "--runner=beam needs Apache Beam, which is not installed: pip install")
    assert not out.exists()


def _copy_to_bucket(folder, bucket):
    import tensorflow as tf

    for path in sorted(folder.rglob("*")):
        target = f"{bucket}/{path.relative_to(folder).as_posix()}"
        if path.is_dir():
            tf.io.gfile.makedirs(target)
        else:
            tf.io.gfile.copy(str(path), target, overwrite=True)


@pytest.mark.parametrize("layout", ["kaggle_dr", "csv"])
def test_photographs_in_a_bucket_build_as_from_a_local_folder(tmp_path, layout):
    """--data_dir on a bucket (ram://, TensorFlow's in-memory filesystem, standing in for gs://):
    the label files are read and the folders listed there, and each photograph is read there
    by the worker, as a Dataflow job's workers would read gs://; the shards are the local
    folder's, byte for byte, on Beam and locally, and a corrupt photograph is a reject."""
    import tensorflow as tf

    from tests.test_sources import write_fundus

    folder = tmp_path / "raw"
    if layout == "kaggle_dr":
        (folder / "train").mkdir(parents=True)
        names = [f"{p}_{eye}" for p in range(10, 22) for eye in ("left", "right")]
        (folder / "trainLabels.csv").write_text(
            "image,level\n" + "".join(f"{n},{i % 5}\n" for i, n in enumerate(names))
        )
        for i, name in enumerate(names[:-1]):
            write_fundus(folder / "train" / f"{name}.jpeg", i, grade=i % 5)
        (folder / "train" / f"{names[-1]}.jpeg").write_bytes(b"\xff\xd8 not a photograph")
    else:
        rows = []
        for i in range(12):
            name = f"photos/{'a' if i % 2 else 'b'}/eye {i}.png"
            write_fundus(folder / name, i, grade=i % 5)
            rows.append(f"{name},{i % 5}\n")
        (folder / "photos" / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
        rows.append("photos/b/broken.png,1\n")
        rows.append("../outside.png,0\n")
        (folder / "labels.csv").write_text("path,label\n" + "".join(rows))
    bucket = f"ram://raw-{layout}"
    _copy_to_bucket(folder, bucket)
    options = builder.BuildOptions(image_size=64, num_shards=2, seed=1)

    want = builder.build(
        make_source(layout, str(folder)),
        str(tmp_path / "local"),
        options,
        workers=1,
        progress=False,
    )
    source = make_source(layout, bucket)
    got = builder.build(
        source,
        str(tmp_path / "beam"),
        options,
        progress=False,
        runner="beam",
        beam_options=pipeline_options(IN_PROCESS),
    )
    assert got["source"]["data_dir"] == bucket
    for key in ("num_written", "num_rejected", "splits"):
        assert got[key] == want[key], key
    assert got["num_rejected"] >= 1 and got["num_written"] >= 10
    shards = {n: h for n, h in _files(tmp_path / "beam").items() if n.endswith(".tfrecord")}
    assert shards and shards == {
        n: h for n, h in _files(tmp_path / "local").items() if n.endswith(".tfrecord")
    }
    with open(tmp_path / "beam" / builder.REJECTS) as f:
        rejects = f.read()
    assert bucket in rejects and str(folder) not in rejects
    if layout == "kaggle_dr":
        assert f"{bucket}/train/21_right.jpeg," in rejects
    else:
        assert "path escapes data_dir" in rejects and f"{bucket}/photos/b/broken.png," in rejects
    # The local builder reads the bucket as well (one process: ram:// is per process).
    local = builder.build(
        source, str(tmp_path / "bucket_local"), options, workers=1, progress=False
    )
    assert _files(tmp_path / "bucket_local") == _files(tmp_path / "beam")
    assert local == got
    assert not tf.io.gfile.exists(f"{bucket}/{builder.MANIFEST}")
