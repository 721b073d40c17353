"""Evaluation: clinical metrics against scikit-learn, operating points, the eval.py outputs."""

import csv
import html.parser
import json
import os

import cv2
import ml_collections
import numpy as np
import pytest
from sklearn import metrics as skm

from benchmarks.decode_memory import patched_jpeg, zeros_png
from effdr_tf.errors import EffdrError
from effdr_tf.evaluation import (
    clinical,
    evaluate,
    fellow_eye,
    metrics,
    predict,
    scoring,
    thresholds,
)
from tests import browser
from tests.conftest import run_command
from tests.test_pipeline import build_tiny
from tests.tiny_config import train_exported

K = 5


def _predictions(case, n=600, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, K, n)
    if case == "random":
        probs = rng.dirichlet(np.ones(K), n)
    elif case == "informative":
        logits = rng.normal(size=(n, K)) + 2.0 * np.eye(K)[labels]
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    else:
        predicted = {"perfect": labels, "reversed": K - 1 - labels, "one_class": 0 * labels}[case]
        probs = 0.9 * np.eye(K)[predicted] + 0.02
    return labels, probs


@pytest.mark.parametrize("case", ["random", "informative", "perfect", "reversed", "one_class"])
def test_clinical_metrics_equal_sklearn(case):
    labels, probs = _predictions(case)
    predicted = probs.argmax(1)
    points = clinical.operating_points(labels, probs)  # as if fitted on validation
    result = clinical.summarize(labels, probs, points, bootstrap_rounds=0)
    assert result["kappa"] == pytest.approx(
        skm.cohen_kappa_score(labels, predicted, weights="quadratic"), abs=1e-9
    )
    np.testing.assert_array_equal(
        result["confusion"], skm.confusion_matrix(labels, predicted, labels=range(K))
    )
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, predicted, labels=range(K), zero_division=0
    )
    pc = result["per_class"]
    np.testing.assert_allclose(pc["precision"], precision)
    np.testing.assert_allclose(pc["sensitivity"], recall)
    np.testing.assert_allclose(pc["f1"], f1)
    np.testing.assert_array_equal(pc["support"], support)
    for c in range(K):
        negatives = labels != c
        specificity = np.mean(predicted[negatives] != c)
        assert pc["specificity"][c] == pytest.approx(specificity)
        assert result["roc_auc"][c] == pytest.approx(skm.roc_auc_score(labels == c, probs[:, c]))
    referable = labels >= 2
    score = probs[:, 2:].sum(1)
    assert result["referable"]["auc"] == pytest.approx(skm.roc_auc_score(referable, score))
    point = result["referable"]["operating_points"]["high_sensitivity"]
    flagged = score >= point["threshold"]
    assert point["sensitivity"] == pytest.approx(np.mean(flagged[referable]))
    assert point["sensitivity"] >= clinical.HIGH_SENSITIVITY_TARGET


def test_one_class_labels_leave_aucs_undefined_not_crashing():
    labels = np.zeros(50, int)
    probs = np.random.default_rng(0).dirichlet(np.ones(K), 50)
    result = clinical.summarize(labels, probs, bootstrap_rounds=20)
    assert result["roc_auc"][0] is None and result["referable"]["auc"] is None
    assert "operating_points" not in result["referable"]
    assert clinical.can_fit_operating_points(labels) == "no referable images (grade >= 2)"
    with pytest.raises(ValueError):
        clinical.operating_points(labels, probs)


def test_bootstrap_intervals_contain_the_estimate_and_shrink_with_more_data():
    widths = []
    for n in (200, 3200):
        labels, probs = _predictions("informative", n=n, seed=n)
        result = clinical.summarize(labels, probs, bootstrap_rounds=300)
        low, high = result["bootstrap_95"]["kappa"]
        assert low <= result["kappa"] <= high
        low_auc, high_auc = result["bootstrap_95"]["referable_auc"]
        assert low_auc <= result["referable"]["auc"] <= high_auc
        widths.append(high - low)
    assert widths[1] < 0.5 * widths[0]


def test_calibration_of_a_calibrated_and_an_overconfident_model():
    rng = np.random.default_rng(0)
    n = 20000
    confidence = rng.uniform(0.2, 1.0, n)
    correct = rng.uniform(size=n) < confidence
    labels = np.where(correct, 0, 1)
    probs = np.zeros((n, K))
    probs[:, 0] = confidence
    probs[:, 1:] = ((1 - confidence) / (K - 1))[:, None]
    assert clinical.expected_calibration_error(labels, probs)["ece"] < 0.02
    sharp = np.eye(K)[probs.argmax(1)] * 0.999 + 0.00025
    assert clinical.expected_calibration_error(labels, sharp)["ece"] > 0.2


def test_patient_level_takes_the_worse_eye():
    labels = np.array([0, 3, 1, 1, 4])
    probs = np.eye(K)[[0, 2, 1, 0, 4]] * 0.96 + 0.01
    patients = ["a", "a", "b", "b", "c"]
    worst, rows = clinical.by_patient(labels, probs, patients)
    np.testing.assert_array_equal(worst, [3, 1, 4])
    np.testing.assert_array_equal(rows.argmax(1), [2, 1, 4])


class _FakeModel:
    input_shape = (None, 32, 32, 3)
    output_shape = (None, K)


def test_operating_points_come_from_validation_only(monkeypatch, tmp_path):
    """Validation and test have different score distributions: thresholds fitted on test
    would differ, and metrics.json must carry validation's."""
    val_labels, val_probs = _predictions("informative", n=400, seed=1)
    test_labels, test_probs = _predictions("informative", n=400, seed=2)
    test_probs = test_probs**3 / (test_probs**3).sum(1, keepdims=True)  # sharper on test
    data = {"validation": (val_labels, val_probs), "test": (test_labels, test_probs)}
    manifest = {"num_classes": K, "splits": {s: {"count": 400} for s in data}}
    config = ml_collections.ConfigDict({"variant": "tiny", "model": {"normalization": "auto"}})
    monkeypatch.setattr(
        scoring, "load_run", lambda d, **kw: scoring.Run(d, _FakeModel(), config), raising=True
    )
    monkeypatch.setattr(evaluate.pipeline, "load_manifest", lambda d: manifest)

    def meta(split):
        n = len(data[split][0])
        ids = np.array([f"{split}-{i}" for i in range(n)])
        patients = np.array([f"{split}-p{i // 2}" for i in range(n)])
        return ids, patients, np.array(["right", "left"] * (n // 2))

    def fake_score(run, data_dir, split, tta="none", rotations=(), batch_size=None):
        labels, probs = data[split]
        ids, patients, eyes = meta(split)
        return {"ids": ids, "patient_ids": patients, "eyes": eyes, "labels": labels,
                "probabilities": probs}  # fmt: skip

    monkeypatch.setattr(scoring, "score_split", fake_score)
    summary = evaluate.evaluate(
        str(tmp_path), data_dir="data", splits=["test"], out_dir=str(tmp_path / "out"),
        bootstrap_rounds=0, fellow=True,
    )  # fmt: skip
    from_validation = clinical.operating_points(val_labels, val_probs)
    from_test = clinical.operating_points(test_labels, test_probs)
    assert summary["thresholds"] == from_validation
    assert from_test["high_sensitivity"] != from_validation["high_sensitivity"]
    used = summary["splits"]["test"]["referable"]["operating_points"]
    assert used["high_sensitivity"]["threshold"] == from_validation["high_sensitivity"]
    assert list(summary["splits"]) == ["test"]  # validation scored for thresholds only
    # Grade cut points for kappa: fitted on validation, applied unchanged to test.

    cuts, _ = thresholds.fit(thresholds.expected_grade(val_probs), val_labels, K)
    on_test, _ = thresholds.fit(thresholds.expected_grade(test_probs), test_labels, K)
    assert summary["grade_cut_points"] == pytest.approx(cuts, abs=1e-6)
    assert not np.allclose(on_test, cuts)
    fitted = summary["splits"]["test"]["fitted_grades"]
    want = thresholds.kappa(thresholds.expected_grade(test_probs), test_labels, cuts, K)
    assert fitted["kappa"] == pytest.approx(want)
    # The fellow-eye stage: fitted on validation alone, applied to test unchanged.
    _, patients, eyes = meta("validation")
    stage = fellow_eye.fit(val_probs, val_labels, patients, eyes)
    _, patients, eyes = meta("test")
    second = stage.apply(test_probs, patients, eyes)
    got = summary["splits"]["test"]["fellow_eye"]
    want = metrics.quadratic_weighted_kappa(
        metrics.confusion_matrix(test_labels, second.argmax(1), K)
    )
    assert got["image"]["kappa"] == pytest.approx(want)
    assert got["images_with_fellow_eye"] == 400 and got["patient"]["kappa"] is not None


class _Images(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny model trained for a few steps, exported, on data with validation and test."""
    root = tmp_path_factory.mktemp("evalrun")
    counts = {"train": [24, 16, 16, 12, 12], "validation": [6, 4, 4, 4, 4], "test": [5, 4, 4, 3, 4]}
    build_tiny(root / "data", counts, textured=True)
    train_exported(root / "data", root / "run")
    return root


def test_eval_writes_metrics_predictions_figures_and_report(trained_run, tmp_path):
    out = tmp_path / "eval"
    result = run_command(
        "eval.py",
        f"--model_dir={trained_run / 'run'}",
        "--split=validation,test",
        "--tta=flip",
        "--bootstrap=50",
        f"--out={out}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "test: n=20 patients=" in result.stdout
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["thresholds_from"] == "validation" and summary["tta"] == "flip"
    assert summary["fitted_from"]["operating points"].startswith("validation (22 images of")
    # 20 test images are too few for intervals: a warning instead, printed and on the page.
    assert summary["splits"]["test"]["bootstrap_95"] is None
    assert "warning: test: only " in result.stdout
    assert "intervals withheld" in (out / "report.html").read_text()
    manifest = json.loads((trained_run / "data" / "manifest.json").read_text())
    for split in ("validation", "test"):
        with open(out / f"predictions_{split}.csv") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == manifest["splits"][split]["count"]
        assert len({r["id"] for r in rows}) == len(rows)
        for r in rows:
            p = np.array([float(r[f"p{c}"]) for c in range(K)])
            assert abs(p.sum() - 1) < 1e-4 and int(r["grade"]) == p.argmax()
        got = summary["splits"][split]
        labels = [int(r["label"]) for r in rows]
        grades = [int(r["grade"]) for r in rows]
        assert got["kappa"] == pytest.approx(
            skm.cohen_kappa_score(labels, grades, weights="quadratic"), abs=1e-6
        )
        assert got["count"] == len(rows)
    parser = _Images()
    parser.feed((out / "report.html").read_text())
    assert len(parser.sources) == 8
    for source in parser.sources:
        assert (out / source).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "87.08" in (out / "report.html").read_text()  # the reference numbers beside ours

    # In a real browser: every figure decodes, and the page renders tables and coloured plots.
    assert 'data-figures-loaded="8/8"' in browser.dom_after_load(out / "report.html")
    # A copy without its figures says so on the page.
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "report.html").write_text((out / "report.html").read_text())
    dom = browser.dom_after_load(bare / "report.html")
    assert 'data-figures-loaded="0/8"' in dom and "8 of 8 figures could not be loaded" in dom
    # Screenshots: text on both; the plots' colours only where the figures are.
    shots = {}
    for name, page in (("full", out), ("bare", bare)):
        shot = cv2.imread(str(browser.screenshot(page / "report.html", tmp_path / f"{name}.png")))
        assert shot.shape[:2] == (3000, 1280)
        assert (shot < 100).all(axis=2).mean() > 0.001  # dark text
        colourful = np.abs(shot.astype(int) - shot.mean(axis=2, keepdims=True)).max(axis=2) > 40
        shots[name] = colourful.mean()
    assert shots["full"] > 0.002 and shots["full"] > 5 * shots["bare"], shots


def test_eval_bad_inputs_exit_2_with_one_line(trained_run, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        ([f"--model_dir={empty}"], "config.json: not found"),
        ([f"--model_dir={trained_run / 'run'}", "--split=public_test"], "no split 'public_test'"),
        (
            [f"--model_dir={trained_run / 'run'}", "--split=test", f"--calibration={empty}"],
            f"{empty}: no grading.json there",
        ),
    ]
    for args, message in cases:
        result = run_command("eval.py", *args, f"--out={tmp_path / 'out'}")
        assert result.returncode == 2, result.stderr[-1500:]
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and message in errors[0], result.stderr[-1500:]
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_confusion_matrix_matches_sklearn_on_labels_out_of_range():
    labels = np.array([0, 1, 2, 7, -1])
    predicted = np.array([0, 2, 2, 1, 0])
    got = metrics.confusion_matrix(labels, predicted, 3)
    np.testing.assert_array_equal(got, skm.confusion_matrix(labels[:3], predicted[:3]))


def test_predict_on_a_folder_grades_good_images_and_reports_bad_ones(trained_run, tmp_path):
    """Shard images written out as files get the probabilities eval gave them in the shards."""
    import tensorflow as tf

    run = scoring.load_run(str(trained_run / "run"))
    scored = scoring.score_split(run, str(trained_run / "data"), "test")
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    shards = sorted((trained_run / "data").glob("test-*.tfrecord*"))
    written = {}
    for record in tf.data.TFRecordDataset([str(s) for s in shards]).take(3):
        example = tf.io.parse_single_example(record, pipeline_features())
        image_id = example["image/id"].numpy().decode()
        path = folder / "sub" / f"{image_id}.png"
        path.write_bytes(example["image/encoded"].numpy())
        written[str(path)] = image_id
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (folder / "notes.txt").write_text("not an image")
    # A few KB each whose headers declare 3.6 gigapixels: OpenCV raised on these before.
    (folder / "huge.jpg").write_bytes(patched_jpeg(60000, 60000))
    (folder / "huge.png").write_bytes(zeros_png(60000, 60000, rows=1))
    # Operating points as eval.py fits them on validation: `referable` follows the chosen one.
    grading = tmp_path / "grading.json"
    grading.write_text(json.dumps({
        "format": 2, "model_dir": str(trained_run / "run"), "runs": 1, "head": ["softmax"],
        "tta": "none", "tta_rotations": [], "cut_points": None, "prior_correction": None,
        "operating_points": {"high_sensitivity": 0.25, "high_specificity": 0.75},
    }))  # fmt: skip
    result = run_command(
        "eval.py",
        f"--model_dir={trained_run / 'run'}",
        f"--images={folder}",
        f"--out={tmp_path}",
        f"--grading={grading}",
        "--referable=high_specificity",
        "--batch_size=2",
        "--gradcam",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "graded 3 images, 5 unreadable" in result.stdout
    rule = "high_specificity operating point: referable score >= 0.75"
    assert f"referable: {rule}" in result.stdout
    assert "Grad-CAM heat scale" in result.stdout and "validation images" in result.stdout
    assert not (tmp_path / "predictions.csv.partial").exists()
    with open(tmp_path / "predictions.csv") as f:
        rows = {r["path"]: r for r in csv.DictReader(f)}
    assert len(rows) == 8  # every file of the folder, the notes too
    assert rows[str(folder / "notes.txt")]["error"].startswith("not an image file name")
    assert rows[str(folder / "empty.jpg")]["error"] == "empty file"
    assert rows[str(folder / "broken.png")]["error"]
    for name in ("huge.jpg", "huge.png"):
        assert rows[str(folder / name)]["error"] == (
            "image is 60000x60000 (3600.0 megapixels), over the 50 megapixel limit "
            "(--max_megapixels)"
        )
        assert rows[str(folder / name)]["grade"] == ""
    index = {image_id: i for i, image_id in enumerate(scored["ids"])}
    for path, image_id in written.items():
        got = np.array([float(rows[path][f"p{c}"]) for c in range(K)])
        np.testing.assert_allclose(got, scored["probabilities"][index[image_id]], atol=1e-5)
        assert rows[path]["error"] == ""
        score = float(rows[path]["referable_score"])
        assert rows[path]["referable"] == str(int(score >= 0.75))  # not argmax >= 2
        assert rows[path]["referable_rule"] == rule
    overlays = sorted((tmp_path / "gradcam").glob("*.png"))
    assert len(overlays) == 3
    for p in overlays:  # drawn on the photograph at more than the model's 32 px, with a bar
        image = cv2.imread(str(p))
        assert image is not None and image.shape[0] > 2 * 32 and image.shape[1] > image.shape[0]


def test_predict_turns_any_failure_of_one_file_into_its_row(trained_run, tmp_path, monkeypatch):
    """Whatever one file raises (here MemoryError and an OpenCV error from the decoder) is
    that file's error; the others are graded. With nothing graded eval.py exits 2."""
    import tensorflow as tf

    from effdr_tf.data import fundus
    from effdr_tf.evaluation import predict

    folder = tmp_path / "photos"
    folder.mkdir()
    shard = next((trained_run / "data").glob("test-*.tfrecord"))
    record = next(iter(tf.data.TFRecordDataset([str(shard)])))
    photo = tf.io.parse_single_example(record, pipeline_features())["image/encoded"].numpy()
    for name in ("good.png", "memory.png", "opencv.png"):
        (folder / name).write_bytes(photo)
    decode = fundus.decode

    def failing(data, *args, **kwargs):
        if failing.calls == 1:
            failing.calls += 1
            raise MemoryError("cannot allocate 3.6 GB")
        if failing.calls == 2:
            failing.calls += 1
            raise cv2.error("OpenCV(5.0.0) loadsave.cpp:77: error: (-215:Assertion failed)")
        failing.calls += 1
        return decode(data, *args, **kwargs)

    failing.calls = 0
    monkeypatch.setattr(fundus, "decode", failing)
    result = predict.predict_images(str(trained_run / "run"), str(folder), str(tmp_path / "a"))
    errors = {os.path.basename(r["path"]): r["error"] for r in result["rows"]}
    assert result["graded"] == 1 and errors["good.png"] == ""
    assert errors["memory.png"] == (
        "unexpected error while preprocessing: MemoryError: cannot allocate 3.6 GB"
    )
    assert errors["opencv.png"].startswith("unexpected error while preprocessing: error: OpenCV")
    monkeypatch.undo()

    # --max_megapixels reaches the decoder: under a tiny budget nothing is graded, which is an
    # error (exit 2, one line) that still leaves the reasons in predictions.csv.
    out = tmp_path / "b"
    result = run_command(
        "eval.py",
        f"--model_dir={trained_run / 'run'}",
        f"--images={folder}",
        f"--out={out}",
        "--max_megapixels=0.001",
    )
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "none of the 3 images could be graded" in errors[0]
    with open(out / "predictions.csv") as f:
        reasons = [r["error"] for r in csv.DictReader(f)]
    assert len(reasons) == 3
    assert all(r.endswith("over the 0.001 megapixel limit (--max_megapixels)") for r in reasons)
    result = run_command("eval.py", f"--model_dir={trained_run / 'run'}", "--max_megapixels=0")
    assert result.returncode == 2 and "--max_megapixels must be above 0" in result.stderr


def test_predict_keeps_the_rows_graded_before_a_crash(trained_run, tmp_path, monkeypatch):
    """Rows are written as their batch is graded: when the third photograph's overlay fails,
    the first batch's rows are in predictions.csv.partial, and no predictions.csv claims the
    folder is done."""
    import tensorflow as tf

    folder = tmp_path / "photos"
    folder.mkdir()
    shards = sorted((trained_run / "data").glob("test-*.tfrecord*"))
    for i, record in enumerate(tf.data.TFRecordDataset([str(s) for s in shards]).take(5)):
        example = tf.io.parse_single_example(record, pipeline_features())
        (folder / f"{i}.png").write_bytes(example["image/encoded"].numpy())
    draw = predict.gradcam_lib.overlay_png

    def failing(*args, **kwargs):
        failing.calls += 1
        if failing.calls == 3:
            raise MemoryError("killed")
        return draw(*args, **kwargs)

    failing.calls = 0
    monkeypatch.setattr(predict.gradcam_lib, "overlay_png", failing)
    out = tmp_path / "out"
    with pytest.raises(MemoryError):
        predict.predict_images(
            str(trained_run / "run"), str(folder), str(out), gradcam=True, batch_size=2,
            referable="argmax",
        )  # fmt: skip
    assert not (out / "predictions.csv").exists()
    with open(out / "predictions.csv.partial") as f:
        rows = list(csv.DictReader(f))
    assert [os.path.basename(r["path"]) for r in rows] == ["0.png", "1.png"]
    assert all(r["grade"] != "" and r["referable_rule"].startswith("argmax") for r in rows)


def pipeline_features():
    from effdr_tf.pipeline import input as pipeline

    return pipeline.FEATURES


def test_gradcam_puts_the_heat_where_the_evidence_is():
    """A model whose class-1 logit is the mean of a feature map that lights up on bright pixels:
    Grad-CAM must put the heat on the bright patch and nowhere else."""
    import keras

    from effdr_tf.evaluation import gradcam

    inputs = keras.Input((32, 32, 3))
    features = keras.layers.Conv2D(4, 1, activation="relu", name="features")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    logits = keras.layers.Dense(2, name="head")(pooled)
    model = keras.Model(inputs, logits)
    model.get_layer("features").set_weights([np.ones((1, 1, 3, 4)) / 3, -np.ones(4) * 10])
    model.get_layer("head").set_weights([np.array([[-1.0, 1.0]] * 4), np.zeros(2)])
    assert gradcam.last_feature_layer(model).name == "features"
    image = np.zeros((1, 32, 32, 3), np.float32)
    image[0, 8:16, 20:28] = 200.0
    heat = gradcam.heatmaps(model, image, classes=np.array([1]))[0]
    heat = gradcam.unit(heat, heat.max())  # one image: its own maximum is the fixed scale
    inside = np.zeros((32, 32), bool)
    inside[8:16, 20:28] = True
    assert heat[inside].mean() > 0.9 and heat[~inside].mean() < 0.1
    assert gradcam.overlay_png(image[0], heat)[:4] == b"\x89PNG"


def test_exports_match_the_keras_model(trained_run):
    from effdr_tf.serving import export

    report = export.export(str(trained_run / "run"), check_images=24)
    assert report["saved_model"]["max_abs_diff"] <= 1e-5
    assert report["float32"]["max_abs_diff"] <= 1e-4
    assert report["float16"]["max_abs_diff"] <= 1e-2
    assert report["int8"]["argmax_agreement"] >= 0.95
    assert report["float16"]["bytes"] < 0.7 * report["float32"]["bytes"]
    for values in report.values():
        assert os.path.exists(values["path"])


def test_cross_dataset_evaluation_reads_other_shards_as_its_own(trained_run, tmp_path):
    """A run scored on another shard set of another image size: the model's input size and the
    run's input settings are used, every example of the other set is scored once."""
    other = tmp_path / "other"
    build_tiny(other, {"validation": [3, 3, 2, 2, 2]}, textured=True, image_size=48)
    summary = evaluate.evaluate(
        str(trained_run / "run"),
        data_dir=str(other),
        splits=["validation"],
        out_dir=str(tmp_path / "eval"),
        bootstrap_rounds=0,
    )
    assert summary["data_dir"] == str(other) and summary["image_size"] == 32
    assert summary["splits"]["validation"]["count"] == 12
    own = evaluate.evaluate(
        str(trained_run / "run"), splits=["validation"], out_dir=str(tmp_path / "own"),
        bootstrap_rounds=0,
    )  # fmt: skip
    assert own["data_dir"] == str(trained_run / "data")
    assert own["splits"]["validation"]["count"] == 22


def test_dihedral_tta_averages_the_eight_views():
    """A model that pools every pixel alike is exactly invariant to the 8 views: TTA changes
    nothing. One that reads pixel positions gets the mean of its outputs on the 8 views."""
    import keras
    import tensorflow as tf

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (3, 8, 8, 3)).astype(np.float32)
    inputs = keras.Input((8, 8, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    invariant_model = keras.Model(inputs, keras.layers.Dense(4)(pooled / 255.0))

    def invariant(x):
        return tf.nn.softmax(invariant_model(x))

    plain = scoring.tta_probabilities(invariant, tf.constant(images), "none").numpy()
    for tta in ("flip", "dihedral"):
        got = scoring.tta_probabilities(invariant, tf.constant(images), tta).numpy()
        np.testing.assert_allclose(got, plain, atol=1e-6)

    flat = keras.layers.Flatten()(inputs)
    positional_model = keras.Model(inputs, keras.layers.Dense(4)(flat / 255.0))

    def positional(x):
        return tf.nn.softmax(positional_model(x))

    views = [np.rot90(images, k, axes=(1, 2)) for k in range(4)]
    views += [v[:, :, ::-1] for v in views]
    want = np.mean([positional(np.ascontiguousarray(v)).numpy() for v in views], axis=0)
    got = scoring.tta_probabilities(positional, tf.constant(images), "dihedral").numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert (
        np.abs(got - scoring.tta_probabilities(positional, tf.constant(images), "none")).max()
        > 1e-3
    )
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-6)


def test_thresholds_fitted_for_kappa_find_the_known_cut_points():

    assert thresholds.apply([0.49, 0.5, 1.6, 9.0], thresholds.natural(5)).tolist() == [0, 1, 2, 4]
    # An expected grade squeezed towards the mean, as a softmax's is: grade k scores
    # 0.5 k + 0.5 +- 0.2, so every cut point between (0.5 k + 0.7, 0.5 k + 0.8) is perfect and
    # the natural ones (0.5, 1.5, ...) are not.
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 2000)
    scores = 0.5 * labels + 0.5 + rng.uniform(-0.2, 0.2, labels.size)
    assert thresholds.kappa(scores, labels, thresholds.natural(5), 5) < 0.75
    cuts, kappa = thresholds.fit(scores, labels, 5)
    assert kappa == pytest.approx(1.0)
    k = np.arange(4)
    assert np.all(cuts > 0.5 * k + 0.7) and np.all(cuts < 0.5 * k + 0.8), cuts
    # Overlapping classes: as good as an exhaustive search over every pair of cut points.
    import itertools

    for seed in range(10):
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, 3, 30)
        scores = 0.4 * labels + rng.normal(0, 0.35, labels.size)
        _, kappa = thresholds.fit(scores, labels, 3)
        distinct = np.unique(scores)
        options = np.concatenate([(distinct[:-1] + distinct[1:]) / 2, [-9.0, 9.0]])
        best = max(
            thresholds.kappa(scores, labels, np.array(pair), 3)
            for pair in itertools.combinations(np.sort(options), 2)
        )
        assert kappa >= thresholds.kappa(scores, labels, thresholds.natural(3), 3)
        assert kappa >= best - 0.01, (seed, kappa, best)


def test_an_ensemble_of_two_copies_of_a_run_equals_the_run(trained_run, tmp_path):
    run_dir = str(trained_run / "run")
    one = evaluate.evaluate(
        run_dir, splits=["validation", "test"], out_dir=str(tmp_path / "one"), bootstrap_rounds=0
    )
    two = evaluate.evaluate(
        f"{run_dir},{run_dir}",
        splits=["validation", "test"],
        out_dir=str(tmp_path / "two"),
        bootstrap_rounds=0,
        fellow=True,
    )
    assert two["runs"] == 2
    for split in ("validation", "test"):
        a = (tmp_path / "one" / f"predictions_{split}.csv").read_text()
        b = (tmp_path / "two" / f"predictions_{split}.csv").read_text()
        assert a == b
        assert one["splits"][split]["kappa"] == two["splits"][split]["kappa"]
    assert one["grade_cut_points"] == two["grade_cut_points"]
    # These shards record no eyes: the fellow-eye stage has nothing to pair, is not fitted,
    # and no figure claims to use it; the report says why.
    assert "fellow_eye" not in two["splits"]["test"] and two["fellow_eye"]["cut_points"] is None
    why = "requested, but no validation split with pairs of eyes to fit it on"
    assert two["fitted_from"]["fellow-eye stage"] == why
    assert why in (tmp_path / "two" / "report.html").read_text()


def test_cut_points_fitted_on_validation_grade_new_photographs(trained_run, tmp_path):
    """eval.py writes the validation cut points to grading.json; --images applies them
    unchanged beside argmax."""
    import tensorflow as tf

    run_dir = str(trained_run / "run")
    summary = evaluate.evaluate(
        run_dir, splits=["test"], out_dir=str(tmp_path / "eval"), bootstrap_rounds=0
    )
    grading = json.loads((tmp_path / "eval" / "grading.json").read_text())
    assert grading["cut_points"] == summary["grade_cut_points"]
    assert grading["fitted_on"]["split"] == "validation"
    cuts = np.array(grading["cut_points"])

    folder = tmp_path / "photos"
    folder.mkdir()
    shards = sorted((trained_run / "data").glob("test-*.tfrecord*"))
    for i, record in enumerate(tf.data.TFRecordDataset([str(s) for s in shards]).take(6)):
        example = tf.io.parse_single_example(record, pipeline_features())
        (folder / f"{i}.png").write_bytes(example["image/encoded"].numpy())
    result = predict.predict_images(
        run_dir, str(folder), str(tmp_path / "out"), grading=str(tmp_path / "eval" / "grading.json")
    )
    assert result["cut_points"] == cuts.tolist() and result["graded"] == 6
    with open(result["csv"]) as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        p = np.array([float(row[f"p{c}"]) for c in range(5)])
        expected = thresholds.expected_grade(p[None])
        want = int(thresholds.apply(expected, cuts)[0])
        assert int(row["grade"]) == int(p.argmax())
        # The CSV's rounded probabilities can put an expected grade that sits on a cut point
        # on its other side; such a row is checked by its argmax grade alone.
        if np.min(np.abs(expected[0] - cuts)) > 1e-3:
            assert int(row["grade_fitted"]) == want
    bad = tmp_path / "bad.json"
    bad.write_text('{"cut_points": [0.5]}')
    with pytest.raises(EffdrError, match="1 cut points for a model of 5 grades"):
        predict.predict_images(run_dir, str(folder), str(tmp_path / "o2"), grading=str(bad))


def test_small_rotation_views_turn_about_the_centre():
    """rotate(90) is tf.image.rot90 (same direction, same centre); 0 changes nothing; each
    angle adds one view to the average."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(0, 255, (2, 9, 9, 3)).astype(np.float32))
    np.testing.assert_allclose(scoring.rotate(images, 0.0).numpy(), images.numpy(), atol=1e-4)
    np.testing.assert_allclose(
        scoring.rotate(images, 90.0).numpy(), tf.image.rot90(images).numpy(), atol=1e-3
    )
    views = scoring.tta_views(images, "flip", rotations=(10.0, -10.0))
    assert len(views) == 4
    small = scoring.rotate(images, 10.0).numpy()
    np.testing.assert_array_equal(views[2].numpy(), small)
    assert np.abs(small - images.numpy()).mean() > 1

    def mean_pixel(x):
        return tf.reduce_mean(x, axis=[1, 2])

    want = np.mean([mean_pixel(v).numpy() for v in views], axis=0)
    got = scoring.tta_probabilities(mean_pixel, images, "flip", (10.0, -10.0)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5)
