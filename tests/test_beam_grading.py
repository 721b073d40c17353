"""Batch grading on Apache Beam (``eval.py --images=... --runner=beam``): every photograph gets
the row ``--runner=local`` gives it, bad files included."""

import csv
import json
import re

import cv2
import numpy as np
import pytest

from benchmarks.decode_memory import patched_jpeg
from effdr_tf.data import synthetic
from tests.conftest import run_command
from tests.test_command_lines import one_error_line, run_without_tensorflow
from tests.tiny_config import get_config

pytestmark = [pytest.mark.beam, pytest.mark.slow]

K = 5
SIZE = 32  # the model's input side
PHOTOGRAPHS = 200
BAD = {
    "empty.jpg": "empty file",
    "broken.png": "truncated image file",
    "notes.txt": "not an image file name",
    "huge.jpg": "over the 50 megapixel limit",
    "black.png": "nearly black image",
}
NUMBERS = ["referable_score"] + [f"p{c}" for c in range(K)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A run (a small conv net whose probabilities differ from photograph to photograph), a
    grading.json with cut points and operating points, and a folder of 200 synthetic
    photographs (JPEG and PNG) beside files that cannot be graded."""
    import keras

    from effdr_tf.evaluation import scoring

    root = tmp_path_factory.mktemp("beam_grading")
    run_dir = root / "run"
    (run_dir / "export").mkdir(parents=True)
    config = get_config()
    config.data.data_dir = ""  # no shards: the builder's defaults (disc crop, JPEG 95)
    config.model.num_classes = K
    (run_dir / "config.json").write_text(config.to_json())
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 64)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(K, name="predictions")(x)
    keras.Model(inputs, outputs).save(run_dir / scoring.MODEL_FILE)
    grading = root / "grading.json"
    grading.write_text(json.dumps({
        "format": 2, "model_dir": str(run_dir), "runs": 1, "head": ["softmax"], "tta": "flip",
        "tta_rotations": [], "prior_correction": None, "cut_points": [0.5, 1.5, 2.5, 3.5],
        "operating_points": {"high_sensitivity": 0.4, "high_specificity": 0.6},
    }))  # fmt: skip

    folder = root / "photos"
    folder.mkdir()
    for i in range(PHOTOGRAPHS):
        image, _ = synthetic.generate(i % K, i, size=96)
        name = folder / f"{i:04d}{'.png' if i % 2 else '.jpg'}"
        cv2.imwrite(str(name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (folder / "notes.txt").write_text("not an image")
    (folder / "huge.jpg").write_bytes(patched_jpeg(60000, 60000))  # a header, a few KB
    cv2.imwrite(str(folder / "black.png"), np.zeros((96, 96, 3), np.uint8))
    return {"run": str(run_dir), "grading": str(grading), "folder": folder}


def _rows(paths) -> tuple[list[str], list[dict]]:
    """(header, rows sorted by path) of one or more CSV files."""
    rows, headers = [], set()
    for path in paths:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows += list(reader)
            headers.add(tuple(reader.fieldnames))
    assert len(headers) == 1
    return list(headers.pop()), sorted(rows, key=lambda r: r["path"])


def test_beam_gives_every_photograph_the_row_local_grading_gives_it(setup, tmp_path):
    """200 photographs and 5 bad files, listed by a glob pattern and graded on the
    Beam's local runner with 2 worker processes: the same rows as predict_images on the folder."""
    from effdr_tf.evaluation import beam_grading, predict

    folder = setup["folder"]
    local = predict.predict_images(
        setup["run"], str(folder), str(tmp_path / "local"), grading=setup["grading"]
    )
    result = beam_grading.grade_with_beam(
        setup["run"], f"{folder}/*", str(tmp_path / "beam"), workers=2, grading=setup["grading"]
    )
    assert (result["graded"], result["unreadable"]) == (PHOTOGRAPHS, len(BAD))
    assert (local["graded"], local["unreadable"]) == (PHOTOGRAPHS, len(BAD))
    names = sorted(p.name for p in (tmp_path / "beam").glob("predictions-*"))
    count = len(names)
    assert names == [f"predictions-{i:05d}-of-{count:05d}.csv" for i in range(count)]
    assert result["shards"] == [str(tmp_path / "beam" / n) for n in names]

    header, want = _rows([local["csv"]])
    got_header, got = _rows(result["shards"])
    assert got_header == header  # every shard starts with predictions.csv's header
    assert [r["path"] for r in got] == [r["path"] for r in want]  # one row per file
    for mine, theirs in zip(got, want, strict=True):
        # Beam batches other photographs together; a probability may move by one unit in
        # its last printed decimal, nothing else may change.
        assert {c: mine[c] for c in header if c not in NUMBERS} == {
            c: theirs[c] for c in header if c not in NUMBERS
        }
        if not mine["error"]:
            np.testing.assert_allclose(
                [float(mine[c]) for c in NUMBERS],
                [float(theirs[c]) for c in NUMBERS],
                atol=1.01e-6,
                rtol=0,
            )
    errors = {r["path"].rsplit("/", 1)[-1]: r["error"] for r in got if r["error"]}
    assert sorted(errors) == sorted(BAD)
    assert all(reason in errors[name] for name, reason in BAD.items())
    # The grading.json's rule and views were applied, as locally.
    rule = "high_sensitivity operating point: referable score >= 0.4"
    assert {r["referable_rule"] for r in got if not r["error"]} == {rule}
    assert {r["grade_fitted"] for r in got if not r["error"]} <= set("01234")
    assert len({r["p0"] for r in got}) > PHOTOGRAPHS // 2  # the photographs are told apart
    recorded = json.loads((tmp_path / "beam" / beam_grading.RULE_FILE).read_text())
    assert recorded["referable"] == local["referable"] and recorded["tta"] == "flip"
    assert (recorded["graded"], recorded["unreadable"]) == (PHOTOGRAPHS, len(BAD))


def test_eval_runner_beam_writes_shards_and_refuses_what_it_does_not_offer(setup, tmp_path):
    """eval.py --runner=beam on a pattern prints what --runner=local prints and writes the
    shards; Grad-CAM, Beam options without Beam, and --runner=beam without --images are one
    error line each, before TensorFlow loads."""
    out = tmp_path / "out"
    result = run_command(
        "eval.py",
        f"--model_dir={setup['run']}",
        f"--images={setup['folder']}/000[0-9].*",
        f"--out={out}",
        f"--grading={setup['grading']}",
        "--runner=beam",
        "--batch_size=4",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(
        r"graded 10 images, 0 unreadable: .*/predictions-\*-of-\d{5}\.csv", result.stdout
    )
    assert "referable: high_sensitivity operating point: referable score >= 0.4" in result.stdout
    _, rows = _rows(sorted(out.glob("predictions-*-of-*.csv")))
    assert [r["path"].rsplit("/", 1)[-1] for r in rows] == [
        f"{i:04d}{'.png' if i % 2 else '.jpg'}" for i in range(10)
    ]

    run = f"--model_dir={setup['run']}"
    images = f"--images={setup['folder']}"
    cases = [
        ([run, "--runner=beam"], "--runner=beam grades photographs: it needs --images"),
        (
            [run, images, "--runner=beam", "--gradcam"],
            "--gradcam is not offered with --runner=beam",
        ),
        ([run, images, "--beam_pipeline_options=--runner=DataflowRunner"], "--runner=beam only"),
    ]
    for args, message in cases:
        one_error_line(
            run_without_tensorflow("eval.py", *args, f"--out={tmp_path / 'no'}"), message
        )
    assert not (tmp_path / "no").exists()
