"""The quickstart demo, shortened (600 photographs, 90 steps): the demo's config through build,
train, evaluate and explain, as the `demo.py` command runs it."""

import csv
import json
import os

import cv2
import pytest

from effdr_tf import demo
from effdr_tf.evaluation.gradcam import DISC_LEVEL
from tests import browser
from tests.conftest import run_command


def test_demo_end_to_end_writes_every_promised_output(tmp_path, capsys):
    out, cache = tmp_path / "out", tmp_path / "cache"
    result = run_command(
        "demo.py",
        f"--out_dir={out}",
        "--num_images=600",
        "--config.train.steps_per_epoch=45",  # the demo's recipe and size, fewer steps
        env={"EFFDR_CACHE": str(cache)},
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    stdout = result.stdout
    # Redirected to a file, the output is plain lines: no progress bars redrawn in place.
    for stream in (result.stdout, result.stderr):
        assert "\r" not in stream and "\x1b[" not in stream and "━" not in stream
    summary = json.loads((out / "summary.json").read_text())

    manifest = json.loads((out / "tfrecords" / "manifest.json").read_text())
    assert manifest["image_size"] == 160 and manifest["num_written"] == 600
    assert manifest["splits"]["test"]["count"] == 120

    run = out / "run"
    config = json.loads((run / "config.json").read_text())
    assert config["variant"] == "lite0" and config["train"]["deterministic"] is True
    assert config["model"]["weights"].startswith(str(cache))  # the converted ImageNet weights
    assert (run / "export" / "model.keras").stat().st_size > 1_000_000
    assert (run / "export" / "saved_model" / "saved_model.pb").exists()
    assert (run / "best.weights.h5").exists() and any((run / "checkpoints").iterdir())
    for logs in ("train", "eval"):  # TensorBoard event files with content
        events = [p for p in (run / logs).iterdir() if "tfevents" in p.name]
        assert events and max(p.stat().st_size for p in events) > 1000
    with open(run / "log.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [45, 90]

    evaluation = out / "eval"
    test = json.loads((evaluation / "metrics.json").read_text())["splits"]["test"]
    assert test["count"] == 120 and test["kappa"] == pytest.approx(summary["test_kappa"])
    assert test["kappa"] > 0.6  # learning happened (0.94 when measured; the full demo: 0.97)
    with open(evaluation / "predictions_test.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 120
    # The report's eight figures and the seven overlays of its class-activation section.
    page = (evaluation / "report.html").read_text()
    assert 'data-figures-loaded="15/15"' in browser.dom_after_load(evaluation / "report.html")
    assert "Where the model looks, against two nulls" in page and page.count("(null)") == 2

    # Every map is measured beside the two nulls on the same test photographs with referable
    # DR, and the overlays use the map that leads the better null by the most.
    gradcam = summary["gradcam"]
    table = {r["map"]: r for r in gradcam["table"]}
    referable = sum(int(r["label"]) >= 2 for r in rows)
    assert set(table) == set(demo.MAP_NAMES.values()) | {"centre prior", "another image's lesions"}
    assert all(r["images"] == referable for r in table.values())
    maps = [r for r in table.values() if "lead" in r]
    best = max(maps, key=lambda r: r["lead"])
    assert gradcam["default"] == best["map"] and gradcam["lesion_focus"] == best
    for r in maps:  # the lead is the AUC above the better null
        nulls = max(table["centre prior"]["auc"], table["another image's lesions"]["auc"])
        assert r["lead"] == pytest.approx(r["auc"] - nulls, abs=1e-9)
    # Printed as measured: the table with both nulls and what does (or does not) beat them.
    assert "centre prior" in stdout and "another image's lesions" in stdout
    assert gradcam["verdict"] in stdout
    assert ("No map beats both nulls" in stdout) == (best["lead"] <= 0)
    files = gradcam["files"]
    assert sorted(p.name for p in (out / "gradcam").iterdir()) == sorted(files)
    assert len(files) == 7  # six referable photographs and one grade 0
    for name in files:  # at twice the model's input, with a caption above and a colour bar
        image = cv2.imread(str(out / "gradcam" / name))
        assert image is not None and image.shape[0] > 320 and image.shape[1] > 320
        # The black corner stays dark: no colour (JET puts a channel above 120) off the fundus.
        assert image[-320:, :320][:6, :6].max() <= DISC_LEVEL

    # What the newcomer reads: each stage, every output's place, the TensorBoard command.
    for stage in range(1, 6):
        assert f"[{stage}/5]" in stdout
    for path in (evaluation / "report.html", evaluation / "metrics.json", out / "gradcam", run):
        assert str(path) in stdout
    assert f"tensorboard --logdir {run}" in stdout
    assert f"quadratic weighted kappa {summary['test_kappa']:.3f}" in stdout
    # Patients counted and resampled: on 60 test patients (under 30 referable) the intervals
    # give way to a warning, printed and on the page.
    assert test["patients"] == summary["test_patients"] == 60
    assert "Test split (120 images of 60 patients; intervals resample patients)" in stdout
    assert "<h2>test (120 images of 60 patients)</h2>" in page
    assert summary["test_intervals_95"] is None and summary["warnings"]
    assert all(f"warning: {w}" in stdout for w in summary["warnings"])

    # The converted weights are cached: converted once, then reused untouched.
    assert "converted efficientnet-lite0" in stdout
    path = demo.lite0_weights(str(cache))
    stamp = os.stat(path).st_mtime_ns
    assert demo.lite0_weights(str(cache)) == path and os.stat(path).st_mtime_ns == stamp
    assert "using the converted weights" in capsys.readouterr().out
