"""The TFRecord builder: exact accounting of bad inputs, safe resumption, deterministic output."""

import csv
import glob
import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from benchmarks.decode_memory import patched_jpeg, zeros_png
from effdr_tf import constants, fileio
from effdr_tf.data import builder, splits, synthetic
from effdr_tf.data.sources import make_source
from effdr_tf.errors import EffdrError
from tests.conftest import REPO, run_command
from tests.test_sources import write_fundus

FEATURES = {
    constants.FEATURE_IMAGE: tf.io.FixedLenFeature([], tf.string),
    constants.FEATURE_FORMAT: tf.io.FixedLenFeature([], tf.string),
    constants.FEATURE_HEIGHT: tf.io.FixedLenFeature([], tf.int64),
    constants.FEATURE_WIDTH: tf.io.FixedLenFeature([], tf.int64),
    constants.FEATURE_LABEL: tf.io.FixedLenFeature([], tf.int64),
    constants.FEATURE_ID: tf.io.FixedLenFeature([], tf.string),
    constants.FEATURE_PATIENT_ID: tf.io.FixedLenFeature([], tf.string),
    constants.FEATURE_EYE: tf.io.FixedLenFeature([], tf.string),
    constants.FEATURE_SOURCE: tf.io.FixedLenFeature([], tf.string),
}


def read_split(output_dir, split):
    files = sorted(glob.glob(os.path.join(output_dir, f"{split}-*.tfrecord")))
    return [
        {k: v.numpy() for k, v in tf.io.parse_single_example(raw, FEATURES).items()}
        for raw in tf.data.TFRecordDataset(files)
    ]


def test_bad_inputs_are_reported_never_lost(tmp_path):
    data = tmp_path / "clinic"
    write_fundus(data / "good.jpg", 1)
    write_fundus(data / "good2.png", 2)
    photo, _ = synthetic.generate(2, 3, size=160)
    Image.fromarray(photo).convert("CMYK").save(data / "cmyk.jpeg", "JPEG")
    Image.fromarray(photo).convert("L").save(data / "gray.jpg", "JPEG")
    cv2.imwrite(str(data / "sixteen.png"), photo[..., ::-1].astype(np.uint16) * 257)
    (data / "zero.jpeg").write_bytes(b"")
    jpeg = (data / "good.jpg").read_bytes()
    (data / "truncated.jpeg").write_bytes(jpeg[: len(jpeg) // 2])
    (data / "notimage.jpeg").write_text("this is not a photograph")
    write_fundus(tmp_path / "outside.jpg", 4)
    rows = [
        "good.jpg,0",
        "good2.png,1",
        "cmyk.jpeg,2",
        "gray.jpg,3",
        "sixteen.png,4",
        "zero.jpeg,0",
        "truncated.jpeg,1",
        "notimage.jpeg,2",
        "good.jpg,7",
        "good2.png,two",
        "cmyk.jpeg,",
        "absent.jpg,1",
        "good.jpg,0",
        "../outside.jpg,0",
    ]
    (data / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    options = builder.BuildOptions(image_size=64, val_fraction=0.0)
    manifest = builder.build(
        make_source("csv", str(data)), str(out), options, workers=2, progress=False
    )
    assert manifest["num_seen"] == len(rows) == 14
    assert manifest["num_written"] == 5 and manifest["num_rejected"] == 9
    with open(out / builder.REJECTS) as f:
        all_reasons = [row["reason"] for row in csv.DictReader(f)]
    assert sorted(all_reasons) == sorted(
        [
            "empty file",
            "truncated image file",
            "not a decodable image",
            "label 7 out of range 0..4",
            "label 'two' is not an integer",
            "missing label",
            "file not found",
            "duplicate id 'good.jpg' (first seen at " + str(data / "good.jpg") + ")",
            "path escapes data_dir",
        ]
    )
    examples = read_split(out, "train")
    assert sorted(e[constants.FEATURE_ID].decode() for e in examples) == [
        "cmyk.jpeg",
        "good.jpg",
        "good2.png",
        "gray.jpg",
        "sixteen.png",
    ]
    for e in examples:
        image = tf.io.decode_jpeg(e[constants.FEATURE_IMAGE]).numpy()
        assert image.shape == (64, 64, 3) == (e[constants.FEATURE_HEIGHT], 64, 3)
        assert e[constants.FEATURE_FORMAT] == b"jpeg" and e[constants.FEATURE_SOURCE] == b"csv"
    assert manifest["splits"]["train"]["class_counts"] == {"0": 1, "1": 1, "2": 1, "3": 1, "4": 1}


def test_images_over_the_pixel_budget_are_rejected_with_their_size(tmp_path):
    """Files of a few hundred bytes whose headers declare gigapixels are rejected before any
    decoding, naming the size and the limit; the budget is a build setting like the others."""
    data = tmp_path / "clinic"
    write_fundus(data / "good.jpg", 1)
    (data / "huge.jpg").write_bytes(patched_jpeg(60000, 60000))
    (data / "huge.png").write_bytes(zeros_png(24000, 24000, rows=1))
    (data / "deep.png").write_bytes(zeros_png(6000, 5000, depth=16, rows=1))
    names = ["good.jpg", "huge.jpg", "huge.png", "deep.png"]
    (data / "labels.csv").write_text("path,label\n" + "".join(f"{n},1\n" for n in names))
    source = make_source("csv", str(data))
    options = builder.BuildOptions(image_size=64, val_fraction=0.0)
    out = tmp_path / "out"
    # Interrupted, then resumed: only with the same budget, since it decides what is written.
    with pytest.raises(KeyboardInterrupt):
        builder.build(_Interrupting(source, 2), str(out), options, progress=False)
    raised = builder.BuildOptions(image_size=64, val_fraction=0.0, max_megapixels=100.0)
    with pytest.raises(EffdrError, match="unfinished build with other options"):
        builder.build(source, str(out), raised, progress=False)
    manifest = builder.build(source, str(out), options, workers=1, progress=False)
    assert manifest["num_written"] == 1 and manifest["num_rejected"] == 3
    with open(out / builder.REJECTS) as f:
        reasons = {os.path.basename(r["path"]): r["reason"] for r in csv.DictReader(f)}
    limit = "over the 50 megapixel limit (--max_megapixels)"
    assert reasons == {
        "huge.jpg": f"image is 60000x60000 (3600.0 megapixels), {limit}",
        "huge.png": f"image is 24000x24000 (576.0 megapixels), {limit}",
        "deep.png": f"image is 6000x5000 (30.0 megapixels, 16-bit: counts as 60.0), {limit}",
    }
    with pytest.raises(EffdrError, match="--max_megapixels=0.0: choose a number above 0"):
        builder.BuildOptions(max_megapixels=0.0).check()


def test_missing_inputs_exit_2_with_one_line(tmp_path):
    for args, expected in [
        ([f"--data_dir={tmp_path / 'absent'}"], "data_dir not found"),
        ([f"--data_dir={tmp_path}"], "trainLabels.csv: label file not found"),
    ]:
        result = run_command(
            "tfrecord_builder.py", "--data=kaggle_dr", f"--output_dir={tmp_path / 'out'}", *args
        )
        assert result.returncode == 2
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and expected in errors[0], result.stderr
        assert "Traceback" not in result.stderr
        assert not (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--image_size=0", "--image_size must be 32 to 4096 pixels"),
        ("--image_size=16", "--image_size must be 32 to 4096 pixels"),
        ("--workers=0", "--workers must be at least 1"),
        ("--workers=-2", "--workers must be at least 1"),
        ("--num_shards=0", "--num_shards must be at least 1"),
        ("--num_images=0", "--num_images must be at least 1"),
        ("--jpeg_quality=101", "--jpeg_quality must be between 1 and 100"),
        ("--val_fraction=1.5", "--val_fraction must be in [0, 1)"),
        ("--withhold_labels=1", "--withhold_labels must be in [0, 1)"),
        ("--max_megapixels=0", "--max_megapixels must be above 0"),
        ("--max_megapixels=nan", "--max_megapixels must be above 0"),
        ("--data=no_such_layout", "value should be one of"),
    ],
)
def test_flag_mistakes_exit_2_before_anything_loads(tmp_path, flag, message):
    from tests.test_command_lines import one_error_line, run_without_tensorflow

    out = tmp_path / "out"
    result = run_without_tensorflow("tfrecord_builder.py", f"--output_dir={out}", flag)
    one_error_line(result, message)
    assert not out.exists()


SYNTHETIC = [
    "--data=synthetic_dr",
    "--num_images=120",
    "--variant=lite0",
    "--num_shards=8",
    "--seed=3",
]


def _synthetic_options():
    return builder.BuildOptions(image_size=224, num_shards=8, seed=3)  # lite0's resolution


def _shard_hashes(output_dir):
    return {
        os.path.basename(p): fileio.sha256(p)
        for p in sorted(glob.glob(os.path.join(output_dir, "*.tfrecord")))
    }


def test_kill_9_then_rerun_gives_the_clean_build(tmp_path):
    clean = tmp_path / "clean"
    source = make_source("synthetic_dr", num_images=120, seed=3, image_size=224)
    want = builder.build(source, str(clean), _synthetic_options(), workers=1, progress=False)

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [
            sys.executable,
            "tfrecord_builder.py",
            *SYNTHETIC,
            f"--output_dir={killed}",
            "--workers=1",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not glob.glob(str(killed / "*.tfrecord")):
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = glob.glob(str(killed / "*.tfrecord"))
    assert finished and not (killed / "manifest.json").exists()
    assert len(finished) < len(want["splits"]["train"]["shards"]) + 2

    got = builder.build(source, str(killed), _synthetic_options(), workers=2, progress=False)
    assert got == want
    assert _shard_hashes(killed) == _shard_hashes(clean)
    assert (killed / builder.REJECTS).read_text() == (clean / builder.REJECTS).read_text()
    assert not (killed / builder.PARTS).exists()
    assert not glob.glob(str(killed / "*.tmp"))


class _Interrupting:
    """Wraps a source so loading its ``n``-th image raises, like a crash in the middle."""

    def __init__(self, source, n):
        self.source, self.n, self.calls = source, n, 0

    def __getattr__(self, name):
        return getattr(self.source, name)

    def load(self, record, **kwargs):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return self.source.load(record, **kwargs)


def test_unfinished_build_resumes_only_with_the_same_settings(tmp_path):
    source = make_source("synthetic_dr", num_images=40, seed=3, image_size=64)
    options = builder.BuildOptions(image_size=64, num_shards=4, seed=3)
    with pytest.raises(KeyboardInterrupt):
        builder.build(_Interrupting(source, 25), str(tmp_path), options, progress=False)
    assert (tmp_path / builder.PARTS / "params.json").exists()
    other = builder.BuildOptions(image_size=64, num_shards=4, seed=4)
    with pytest.raises(EffdrError, match="unfinished build with other options"):
        builder.build(source, str(tmp_path), other, progress=False)
    manifest = builder.build(source, str(tmp_path), options, progress=False)
    clean = builder.build(source, str(tmp_path / "clean"), options, progress=False)
    assert manifest == clean


def test_complete_output_is_kept_unless_overwrite(tmp_path):
    source = make_source("synthetic_dr", num_images=12, seed=1, image_size=64)
    options = builder.BuildOptions(image_size=64, num_shards=2)
    first = builder.build(source, str(tmp_path), options, progress=False)
    stamps = {p: os.stat(p).st_mtime_ns for p in glob.glob(str(tmp_path / "*"))}
    again = builder.build(source, str(tmp_path), options, progress=False)
    assert again == first
    assert {p: os.stat(p).st_mtime_ns for p in glob.glob(str(tmp_path / "*"))} == stamps
    bigger = builder.BuildOptions(image_size=96, num_shards=2)
    rebuilt = builder.build(source, str(tmp_path), bigger, overwrite=True, progress=False)
    assert rebuilt["image_size"] == 96
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in stamps)


def test_validation_is_carved_by_patient_and_stratified(tmp_path):
    source = make_source("synthetic_dr", num_images=600, seed=2, image_size=32)
    options = builder.BuildOptions(image_size=32, val_fraction=0.25, seed=2, image_format="png")
    carved = splits.carve_validation(list(source.scan()), 0.25, seed=2)
    patients = {}
    for r in carved:
        patients.setdefault(r.patient_id, set()).add(r.split)
    assert all(len(s) == 1 for s in patients.values())
    val = [r.label for r in carved if r.split == "validation"]
    train = [r.label for r in carved if r.split == "train"]
    assert abs(len(val) / (len(val) + len(train)) - 0.25) < 0.03

    def worst_eye_shares(split):
        worst = {}
        for r in carved:
            if r.split == split:
                worst[r.patient_id] = max(worst.get(r.patient_id, 0), r.label)
        return np.bincount(list(worst.values()), minlength=5) / len(worst)

    # Patients are stratified by their worse eye: those shares match to rounding.
    assert np.abs(worst_eye_shares("validation") - worst_eye_shares("train")).max() < 0.015
    # What the builder writes is that split.
    small = make_source("synthetic_dr", num_images=60, seed=2, image_size=32)
    expected = [r for r in splits.carve_validation(list(small.scan()), 0.25, 2)]
    manifest = builder.build(small, str(tmp_path), options, workers=1, progress=False)
    written = read_split(tmp_path, "validation")
    assert sorted(e[constants.FEATURE_ID].decode() for e in written) == sorted(
        r.id for r in expected if r.split == "validation"
    )
    assert manifest["splits"]["validation"]["count"] == len(written) > 0
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest


def _clinic(folder, n=2):
    """A csv-layout data dir of ``n`` small photographs, grades 0, 1, ..."""
    for i in range(n):
        write_fundus(folder / f"img {i}.jpg", i)
    rows = "".join(f"img {i}.jpg,{i}\n" for i in range(n))
    (folder / "labels.csv").write_text("path,label\n" + rows)
    return make_source("csv", str(folder))


def _snapshot(folder):
    return {
        os.path.relpath(p, folder): open(p, "rb").read() if os.path.isfile(p) else None
        for p in glob.glob(str(folder / "**"), recursive=True, include_hidden=True)
    }


def test_files_the_builder_did_not_write_are_never_removed_or_replaced(tmp_path):
    source = _clinic(tmp_path / "clinic")
    options = builder.BuildOptions(image_size=64, val_fraction=0.0)
    out = tmp_path / "out"
    out.mkdir()
    (out / "important.tfrecord").write_bytes(b"the user's own records")
    (out / "notes.txt").write_text("keep me")
    # Not empty and not a build of ours: a mistyped --output_dir, refused untouched.
    before = _snapshot(out)
    with pytest.raises(EffdrError, match=f"{out}: not empty .* pass --overwrite to build beside"):
        builder.build(source, str(out), options, progress=False)
    assert _snapshot(out) == before
    first = builder.build(source, str(out), options, overwrite=True, progress=False)
    rebuilt = builder.build(
        source, str(out), builder.BuildOptions(image_size=96), overwrite=True, progress=False
    )
    assert first["num_written"] == rebuilt["num_written"] == 2 and rebuilt["image_size"] == 96
    assert (out / "important.tfrecord").read_bytes() == b"the user's own records"
    assert (out / "notes.txt").read_text() == "keep me"
    assert sorted(os.listdir(out)) == sorted(
        ["important.tfrecord", "notes.txt", "manifest.json", "rejects.csv"]
        + [s["name"] for info in rebuilt["splits"].values() for s in info["shards"]]
    )

    # Someone else's file under a name the build would write: refused before anything is
    # written, with or without --overwrite.
    for name in ["rejects.csv", "train-00000-of-00002.tfrecord", "manifest.json.tmp"]:
        theirs = tmp_path / name.replace(".", "_")
        theirs.mkdir()
        (theirs / name).write_text("theirs")
        (theirs / "important.tfrecord").write_text("theirs too")
        before = _snapshot(theirs)
        with pytest.raises(EffdrError, match=f"{theirs}: not empty"):
            builder.build(source, str(theirs), options, progress=False)
        with pytest.raises(EffdrError, match=f"{theirs / name}: exists and was not written"):
            builder.build(source, str(theirs), options, overwrite=True, progress=False)
        assert _snapshot(theirs) == before

    # The data dir itself as the output folder: the images and labels stay.
    clinic = tmp_path / "clinic"
    inputs = _snapshot(clinic)
    builder.build(source, str(clinic), options, progress=False)
    builder.build(source, str(clinic), options, overwrite=True, progress=False)
    assert {k: v for k, v in _snapshot(clinic).items() if k in inputs} == inputs


@pytest.mark.parametrize(
    "text, problem",
    [
        ('{"num_written": 3', "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"format_version": 1, "splits": {}}', "created_by is None, not effdr_tf"),
        ('{"created_by": "effdr_tf 0.1", "format_version": 7}', "format_version 7, not 1"),
    ],
    ids=["invalid", "list", "foreign", "other-version"],
)
def test_a_manifest_not_written_by_the_builder_is_one_line_exit_2(tmp_path, text, problem):
    _clinic(tmp_path / "clinic", n=1)
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text(text)
    (out / "rejects.csv").write_text("theirs")
    before = _snapshot(out)
    for overwrite in ["--nooverwrite", "--overwrite"][: 2 if problem == "not valid JSON" else 1]:
        result = run_command(
            "tfrecord_builder.py",
            "--data=csv",
            f"--data_dir={tmp_path / 'clinic'}",
            f"--output_dir={out}",
            "--image_size=64",
            "--workers=1",
            overwrite,
        )
        assert result.returncode == 2, result.stderr[-2000:]
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert errors[0].startswith(f"error: {out / 'manifest.json'}: {problem}"), errors[0]
        assert _snapshot(out) == before


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "path,label,label,path\nimg 0.jpg,0,1,img 0.jpg\n",
            "duplicate column name(s) label, path",
        ),
        ("path,label\nimg 0.jpg,0\n" + "x" * 200_000 + ",1\n", "line 3: field larger than"),
        ("path,label\nimg 0.jpg,0\nimg\0 0.jpg,1\n", "line 3: NUL byte"),
    ],
    ids=["duplicate-columns", "long-field", "nul-byte"],
)
def test_label_file_mistakes_exit_2_before_anything_is_written(tmp_path, text, message):
    data = tmp_path / "clinic"
    _clinic(data, n=1)
    (data / "labels.csv").write_text(text)
    out = tmp_path / "out"
    result = run_command(
        "tfrecord_builder.py",
        "--data=csv",
        f"--data_dir={data}",
        f"--output_dir={out}",
        "--image_size=64",
        "--workers=1",
    )
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert errors[0].startswith(f"error: {data / 'labels.csv'}: ") and message in errors[0]
    assert not out.exists()


def test_folder_links_out_of_the_data_dir_are_rejected_not_written(tmp_path):
    data = tmp_path / "graded"
    write_fundus(data / "0" / "inside.jpg", 1)
    (data / "2").mkdir()
    os.symlink(write_fundus(tmp_path / "outside.jpg", 2), data / "2" / "outside.jpg")
    os.symlink("/etc/passwd", data / "2" / "passwd.jpg")
    options = builder.BuildOptions(image_size=64, val_fraction=0.0)
    out = tmp_path / "out"
    manifest = builder.build(make_source("folder", str(data)), str(out), options, progress=False)
    assert manifest["num_seen"] == 3 and manifest["num_written"] == 1
    with open(out / builder.REJECTS) as f:
        rows = sorted((row["path"], row["reason"]) for row in csv.DictReader(f))
    assert rows == [
        (str(data / "2" / "outside.jpg"), "symlink leads outside data_dir"),
        (str(data / "2" / "passwd.jpg"), "symlink leads outside data_dir"),
    ]
    assert [e[constants.FEATURE_ID] for e in read_split(out, "train")] == [b"0/inside.jpg"]


def test_disk_full_is_one_line_and_the_rerun_resumes(tmp_path):
    """A file-size limit (RLIMIT_FSIZE) makes writes fail as a full disk does."""
    import resource

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    out = tmp_path / "out"
    args = [sys.executable, "tfrecord_builder.py", "--data=synthetic_dr", "--num_images=60",
            "--image_size=64", "--num_shards=6", "--workers=1", f"--output_dir={out}"]  # fmt: skip
    full = subprocess.run(
        args, capture_output=True, text=True, cwd=REPO, preexec_fn=small_disk, timeout=300
    )
    assert full.returncode == 2, full.stderr[-2000:]
    errors = [line for line in full.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "cannot write" in errors[0] and "run the same command" in errors[0]
    assert "Traceback" not in full.stderr
    assert not (out / "manifest.json").exists()

    rerun = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    clean = tmp_path / "clean"
    source = make_source("synthetic_dr", num_images=60, image_size=64)
    builder.build(source, str(clean), builder.BuildOptions(image_size=64, num_shards=6),
                  progress=False)  # fmt: skip
    assert _shard_hashes(out) == _shard_hashes(clean)
    assert not glob.glob(str(out / "*.tmp")) and not (out / ".parts").exists()
