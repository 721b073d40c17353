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
        ("--image_size=0", "--image_size must be at least 8 pixels"),
        ("--workers=0", "--workers must be at least 1"),
        ("--workers=-2", "--workers must be at least 1"),
        ("--num_shards=0", "--num_shards must be at least 1"),
        ("--num_images=0", "--num_images must be at least 1"),
        ("--jpeg_quality=101", "--jpeg_quality must be between 1 and 100"),
        ("--val_fraction=1.5", "--val_fraction must be in [0, 1)"),
        ("--data=no_such_layout", "value should be one of"),
    ],
)
def test_flag_mistakes_exit_2_before_anything_loads(tmp_path, flag, message):
    out = tmp_path / "out"
    probe = "import runpy, sys; sys.argv = sys.argv[1:]; "
    probe += "runpy.run_path('tfrecord_builder.py', run_name='__main__')"
    # -X importtime lists every module imported: TensorFlow must not be among them.
    result = run_command(
        "-X", "importtime", "-c", probe, "tfrecord_builder.py", f"--output_dir={out}", flag
    )
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
    assert "tensorflow" not in result.stderr
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
