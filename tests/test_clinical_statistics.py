"""The statistics eval.py reports: patient-level intervals that cover, exact operating points,
nothing fitted on the split it is reported on, patient-level points fitted at patient level,
and warnings instead of intervals on splits too small for them."""

import json

import ml_collections
import numpy as np
import pytest
from sklearn import metrics as skm

from effdr_tf.errors import EffdrError
from effdr_tf.evaluation import clinical, evaluate, fellow_eye, metrics, report, scoring
from effdr_tf.evaluation import thresholds as grade_thresholds

K = 5
# Latent severity cut into grades 0-4; about 58 % of eyes are referable.
CUTS = np.array([-0.8, -0.2, 0.25, 1.0])


def _eyes(rng, patients, *, shared=0.7):
    """Two eyes per patient: a shared latent severity, and a model error shared by the eyes
    (the correlation that makes photographs of one patient not independent)."""
    severity = np.repeat(rng.normal(0, 1, patients), 2) + rng.normal(0, 0.3, 2 * patients)
    error = np.repeat(rng.normal(0, shared, patients), 2) + rng.normal(0, 0.3, 2 * patients)
    score = severity + error
    labels = np.searchsorted(CUTS, severity)
    return labels, np.searchsorted(CUTS, score), score, np.repeat(np.arange(patients), 2)


def test_patient_bootstrap_covers_at_its_nominal_level_and_image_resampling_does_not():
    rng = np.random.default_rng(0)
    labels, grades, score, _ = _eyes(rng, 1_000_000)  # the population's true figures
    true_kappa = metrics.quadratic_weighted_kappa(metrics.confusion_matrix(labels, grades, K))
    true_auc = skm.roc_auc_score(labels >= 2, score)
    # Percentile intervals on 200 patients cover about 0.935 here (measured on 3000 datasets
    # with two seeds): 2000 datasets put the Monte Carlo error (0.005) well inside the band.
    # Resampling images covers about 0.86, so 1000 datasets tell it apart.
    datasets = {"patients": 2000, "images": 1000}
    covered = {"patients": np.zeros(2), "images": np.zeros(2)}
    for d in range(datasets["patients"]):
        labels, grades, score, patients = _eyes(rng, 200)
        for name, ids in (("patients", patients), ("images", None)):
            if d >= datasets[name]:
                continue
            boot = clinical.ClusterBootstrap(ids, len(labels), rounds=400, seed=d)
            low, high = boot.interval(boot.kappa(labels, grades, K))
            covered[name][0] += low <= true_kappa <= high
            low, high = boot.interval(boot.auc(labels >= 2, score))
            covered[name][1] += low <= true_auc <= high
    kappa, auc = covered["patients"] / datasets["patients"]
    assert 0.93 <= kappa <= 0.97 and 0.93 <= auc <= 0.97, covered
    assert (covered["images"] / datasets["images"] < 0.92).all(), covered


def test_each_resampled_statistic_equals_the_statistic_of_the_resample():
    rng = np.random.default_rng(1)
    labels, grades, score, patients = _eyes(rng, 60)
    patients = patients.astype(str)
    patients[:6] = ""  # images without a patient id: clusters of their own
    logits = -0.7 * (np.arange(K)[None] - score[:, None] - 1.5) ** 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    boot = clinical.ClusterBootstrap(patients, len(labels), rounds=5, seed=3)
    assert boot.num_clusters == 6 + 57
    kappa, auc = boot.kappa(labels, grades, K), boot.auc(labels >= 2, score)
    sens, spec = boot.rates(labels >= 2, score > 0.3)
    ece, accuracy = boot.ece(labels, probs), boot.accuracy(labels, grades)
    for r in range(5):
        rows = np.repeat(np.arange(len(labels)), boot.counts[r][boot.cluster].astype(int))
        y, g = labels[rows], grades[rows]
        assert kappa[r] == pytest.approx(skm.cohen_kappa_score(y, g, weights="quadratic"))
        assert auc[r] == pytest.approx(skm.roc_auc_score(y >= 2, score[rows]))
        assert sens[r] == pytest.approx(np.mean(score[rows][y >= 2] > 0.3))
        assert spec[r] == pytest.approx(np.mean(score[rows][y < 2] <= 0.3))
        assert accuracy[r] == pytest.approx(np.mean(y == g))
        want = clinical.expected_calibration_error(y, probs[rows])["ece"]
        assert ece[r] == pytest.approx(want)


def test_summarize_gives_every_figure_an_interval_over_patients():
    rng = np.random.default_rng(2)
    labels, grades, score, patients = _eyes(rng, 150)
    logits = -0.7 * (np.arange(K)[None] - score[:, None] - 1.5) ** 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    points = clinical.operating_points(labels, probs)
    result = clinical.summarize(labels, probs, points, patient_ids=patients, bootstrap_rounds=200)
    assert result["patients"] == 150 and result["count"] == 300 and not result["warnings"]
    boot = result["bootstrap_95"]
    for key, value in (("kappa", result["kappa"]), ("accuracy", result["accuracy"]),
                       ("referable_auc", result["referable"]["auc"]),
                       ("ece", result["calibration"]["ece"])):  # fmt: skip
        low, high = boot[key]
        assert low <= value <= high and high > low, key
    measured = result["referable"]["operating_points"]
    for point in measured.values():
        for key in ("sensitivity", "specificity"):
            low, high = point[f"{key}_95"]
            assert low <= point[key] <= high
    # The figure each point does not pin to its target varies across resamples.
    assert np.diff(measured["high_sensitivity"]["specificity_95"]) > 0.05
    assert np.diff(measured["high_specificity"]["sensitivity_95"]) > 0.05
    # Resampling images instead: narrower, since the two eyes' errors are shared.
    images = clinical.summarize(labels, probs, points, bootstrap_rounds=200)["bootstrap_95"]
    assert np.diff(images["kappa"]) < np.diff(boot["kappa"])


def test_operating_points_are_the_exact_thresholds_a_pruned_roc_curve_skips():
    # 40 referable scores above 1000 non-referable ones: a ROC curve without its collinear
    # points jumps from 0 to 100 % sensitivity, and from 100 % specificity to 0.
    referable = np.linspace(0.60, 0.99, 40)
    healthy = np.linspace(0.01, 0.50, 1000)
    labels = np.r_[np.full(40, 3), np.zeros(1000, int)]
    score = np.r_[referable, healthy]
    probs = np.stack([1 - score, 0 * score, score, 0 * score, 0 * score], 1)
    got = clinical.operating_points(labels, probs)
    # The highest threshold with 39/40 = 97.5 % sensitivity: the second-lowest referable score.
    assert got["high_sensitivity"] == pytest.approx(np.sort(referable)[1])
    # The lowest threshold with 981/1000 specificity: 981 healthy scores below it.
    assert got["high_specificity"] == pytest.approx(np.sort(healthy)[981])
    _, tpr, t = skm.roc_curve(labels >= 2, score)  # what drop_intermediate=True gives
    assert t[np.argmax(tpr >= clinical.HIGH_SENSITIVITY_TARGET)] < got["high_sensitivity"]
    point = clinical.at_threshold(labels, probs, got["high_sensitivity"])
    assert point["sensitivity"] == clinical.HIGH_SENSITIVITY_TARGET
    assert clinical.at_threshold(labels, probs, got["high_specificity"])["specificity"] == 0.981


def test_patient_level_takes_each_figures_eye_by_the_score_it_reads():
    # Patient a: the right eye has the higher expected grade, the left the higher referable
    # score (its probability sits on grades 2 and 4 less than on grade 3, but more in total).
    probs = np.array([
        [0.30, 0.00, 0.00, 0.00, 0.70],  # expected 2.8, referable 0.70
        [0.00, 0.10, 0.85, 0.05, 0.00],  # expected 1.95, referable 0.90
    ])  # fmt: skip
    labels, patients = np.array([2, 2]), ["a", "a"]
    _, rows = clinical.by_patient(labels, probs, patients)
    np.testing.assert_array_equal(rows[0], probs[0])
    _, rows = clinical.by_patient(labels, probs, patients, by="referable")
    np.testing.assert_array_equal(rows[0], probs[1])


class _FakeModel:
    input_shape = (None, 32, 32, 3)
    output_shape = (None, K)


def _probabilities(labels, rng, sharpness=1.5):
    logits = rng.normal(size=(len(labels), K)) + sharpness * np.eye(K)[labels]
    return np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


def _split(rng, patients, prefix, grades=None, sharpness=1.5):
    g = rng.integers(0, K, patients) if grades is None else np.asarray(grades)
    labels = np.repeat(g, 2)
    return {
        "ids": np.array([f"{prefix}-{i}" for i in range(2 * patients)]),
        "patient_ids": np.repeat([f"{prefix}-p{i}" for i in range(patients)], 2),
        "eyes": np.array(["right", "left"] * patients),
        "labels": labels,
        "probabilities": _probabilities(labels, rng, sharpness),
    }


def _fake_runs(monkeypatch, data):
    """evaluate.evaluate on the predictions in ``data`` (split -> scored), no model."""
    manifest = {"num_classes": K,
                "splits": {s: {"count": len(v["ids"])} for s, v in data.items()}}  # fmt: skip
    config = ml_collections.ConfigDict({"variant": "tiny", "model": {"normalization": "auto"}})
    monkeypatch.setattr(scoring, "load_run", lambda d, **kw: scoring.Run(d, _FakeModel(), config))
    monkeypatch.setattr(evaluate.pipeline, "load_manifest", lambda d: manifest)
    monkeypatch.setattr(scoring, "score_split", lambda run, d, split, **kw: data[split])


def test_without_validation_nothing_is_fitted_on_the_test_split(monkeypatch, tmp_path):
    rng = np.random.default_rng(4)
    _fake_runs(monkeypatch, {"test": _split(rng, 150, "t")})
    summary = evaluate.evaluate(str(tmp_path), data_dir="d", splits=["test"],
                                out_dir=str(tmp_path / "out"), bootstrap_rounds=50)  # fmt: skip
    test = summary["splits"]["test"]
    assert "operating_points" not in test["referable"] and "fitted_grades" not in test
    assert "operating_points" not in test["patient_level"]["referable"]
    assert summary["thresholds"] is None and summary["grade_cut_points"] is None
    assert summary["fitted_from"]["operating points"] == evaluate.NONE_WITHOUT_VALIDATION
    assert evaluate.NONE_WITHOUT_VALIDATION in (tmp_path / "out" / "report.html").read_text()
    assert not (tmp_path / "out" / evaluate.GRADING_FILE).exists()


def test_a_one_class_validation_gives_no_operating_points_and_says_why(monkeypatch, tmp_path):
    rng = np.random.default_rng(5)
    data = {"validation": _split(rng, 60, "v", grades=rng.integers(0, 2, 60)),
            "test": _split(rng, 60, "t")}  # fmt: skip
    _fake_runs(monkeypatch, data)
    summary = evaluate.evaluate(str(tmp_path), data_dir="d", splits=["test"],
                                out_dir=str(tmp_path / "out"), bootstrap_rounds=0)  # fmt: skip
    assert "operating_points" not in summary["splits"]["test"]["referable"]
    why = summary["fitted_from"]["operating points"]
    assert why == "none: the validation split has no referable images (grade >= 2)"
    assert summary["grade_cut_points"] is not None  # grades 0 and 1 still give cut points


def _evaluate_with_validation(monkeypatch, tmp_path, seed=6, rounds=0, **kw):
    rng = np.random.default_rng(seed)
    data = {"validation": _split(rng, 200, "v"), "test": _split(rng, 200, "t", sharpness=2.5)}
    _fake_runs(monkeypatch, data)
    summary = evaluate.evaluate(str(tmp_path / "run"), data_dir="d",
                                splits=["validation", "test"], out_dir=str(tmp_path / "out"),
                                bootstrap_rounds=rounds, fellow=True, **kw)  # fmt: skip
    return data, summary


def test_grading_json_carries_everything_fitted_on_validation(monkeypatch, tmp_path):
    data, summary = _evaluate_with_validation(monkeypatch, tmp_path)
    grading = json.loads((tmp_path / "out" / evaluate.GRADING_FILE).read_text())
    v = data["validation"]
    assert grading["format"] == 2 and grading["runs"] == 1 and grading["head"] == ["softmax"]
    assert grading["fitted_on"] == {"data_dir": "d", "split": "validation", "images": 400,
                                    "patients": 200}  # fmt: skip
    assert grading["operating_points"] == clinical.operating_points(v["labels"], v["probabilities"])
    worst, rows = clinical.by_patient(v["labels"], v["probabilities"], v["patient_ids"],
                                      by="referable")  # fmt: skip
    assert grading["patient_operating_points"] == clinical.operating_points(worst, rows)
    assert grading["patient_operating_points"] != grading["operating_points"]
    worst, rows = clinical.by_patient(v["labels"], v["probabilities"], v["patient_ids"])
    cuts, _ = grade_thresholds.fit(grade_thresholds.expected_grade(rows), worst, K)
    assert grading["patient_cut_points"] == pytest.approx(cuts, abs=1e-6)
    assert grading["fellow_eye"]["model"]["coef"] and grading["prior_correction"] is None
    for key in ("tta", "tta_rotations", "cut_points", "validation_kappa_argmax",
                "validation_kappa_fitted", "model_dir"):  # fmt: skip
        assert key in grading
    # Patient-level figures on test are read at the patient-level points.
    t = data["test"]
    worst, rows = clinical.by_patient(t["labels"], t["probabilities"], t["patient_ids"],
                                      by="referable")  # fmt: skip
    got = summary["splits"]["test"]["patient_level"]["referable"]["operating_points"]
    for name, threshold in grading["patient_operating_points"].items():
        want = clinical.at_threshold(worst, rows, threshold)
        assert got[name]["threshold"] == threshold
        assert got[name]["sensitivity"] == want["sensitivity"] and not got[name]["out_of_fold"]


def test_validation_figures_at_its_own_points_are_out_of_fold(monkeypatch, tmp_path):
    data, summary = _evaluate_with_validation(monkeypatch, tmp_path)
    v = data["validation"]
    validation = summary["splits"]["validation"]
    fold = clinical.folds(v["patient_ids"], len(v["labels"]))
    oof = clinical.out_of_fold_thresholds(v["labels"], v["probabilities"], fold)
    got, fitted = [], []
    for name, point in validation["referable"]["operating_points"].items():
        assert point["out_of_fold"] and point["threshold"] == summary["thresholds"][name]
        want = clinical.at_threshold(v["labels"], v["probabilities"], oof[name])
        assert (point["sensitivity"], point["specificity"]) == tuple(want.values())
        got += [point["sensitivity"], point["specificity"]]
        here = clinical.at_threshold(v["labels"], v["probabilities"], point["threshold"])
        fitted += [here["sensitivity"], here["specificity"]]
    # In-sample, each point's target is met by construction; out-of-fold figures differ.
    assert fitted[0] >= clinical.HIGH_SENSITIVITY_TARGET and fitted[3] >= 0.981
    assert got != fitted
    scores = grade_thresholds.expected_grade(v["probabilities"])
    grades = clinical.out_of_fold_grades(scores, v["labels"], fold, K)
    want = metrics.quadratic_weighted_kappa(metrics.confusion_matrix(v["labels"], grades, K))
    assert validation["fitted_grades"]["kappa"] == pytest.approx(want)
    in_sample = grade_thresholds.kappa(scores, v["labels"], summary["grade_cut_points"], K)
    assert validation["fitted_grades"]["kappa"] < in_sample
    # The fellow-eye stage's cut points: fitted inside the folds too.
    second = fellow_eye.out_of_fold(v["probabilities"], v["labels"], v["patient_ids"], v["eyes"])
    grades = fellow_eye.out_of_fold_grades(second, v["labels"], v["patient_ids"], K)
    want = metrics.quadratic_weighted_kappa(metrics.confusion_matrix(v["labels"], grades, K))
    got = validation["fellow_eye"]["image"]["kappa_fitted_cut_points"]
    assert validation["fellow_eye"]["out_of_fold"] and got == pytest.approx(want)


def test_calibration_from_another_evaluation_supplies_every_fitted_point(monkeypatch, tmp_path):
    _evaluate_with_validation(monkeypatch, tmp_path / "a")
    source = tmp_path / "a" / "out" / evaluate.GRADING_FILE
    grading = json.loads(source.read_text())
    rng = np.random.default_rng(7)
    external = {"test": _split(rng, 150, "m")}  # no validation split of its own
    _fake_runs(monkeypatch, external)
    for given, fellow in ((source, True), (source.parent, False)):  # file, or its folder
        summary = evaluate.evaluate(str(tmp_path / "run"), data_dir="d", splits=["test"],
                                    out_dir=str(tmp_path / "ext"), bootstrap_rounds=0,
                                    calibration=str(given), fellow=fellow)  # fmt: skip
        test = summary["splits"]["test"]
        assert summary["calibration"] == str(source)
        assert summary["thresholds"] == grading["operating_points"]
        for name, point in test["referable"]["operating_points"].items():
            assert point["threshold"] == grading["operating_points"][name]
        scores = grade_thresholds.expected_grade(external["test"]["probabilities"])
        want = grade_thresholds.kappa(scores, external["test"]["labels"],
                                      grading["cut_points"], K)  # fmt: skip
        assert test["fitted_grades"]["kappa"] == pytest.approx(want)
        assert ("fellow_eye" in test) == fellow  # the file's stage only when asked for
        assert str(source) in summary["fitted_from"]["cut points"]
    # A run folder: its evaluation on its own data.
    run = tmp_path / "r"
    (run / "eval_shards").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"data": {"data_dir": "/x/shards/"}}))
    (run / "eval_shards" / "grading.json").write_text(source.read_text())
    assert evaluate.find_calibration(str(run)) == str(run / "eval_shards" / "grading.json")


def test_a_calibration_fitted_on_other_outputs_is_one_error_line(monkeypatch, tmp_path):
    _evaluate_with_validation(monkeypatch, tmp_path / "a")
    source = tmp_path / "a" / "out" / evaluate.GRADING_FILE
    grading = json.loads(source.read_text())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(dict(grading, tta="flip", head=["regression"])))
    with pytest.raises(EffdrError) as e:
        evaluate.evaluate(str(tmp_path / "run"), data_dir="d", splits=["test"],
                          out_dir=str(tmp_path / "o"), bootstrap_rounds=0,
                          calibration=str(bad))  # fmt: skip
    message = str(e.value)
    assert "\n" not in message and str(bad) in message and "--tta=flip" in message
    assert "regression" in message
    with pytest.raises(EffdrError, match="no grading.json there"):
        evaluate.find_calibration(str(tmp_path / "nowhere"))


def test_small_splits_carry_a_warning_instead_of_an_interval(monkeypatch, tmp_path):
    rng = np.random.default_rng(8)
    labels = np.r_[np.zeros(40, int), np.full(5, 3)]
    result = clinical.summarize(labels, _probabilities(labels, rng), bootstrap_rounds=100)
    assert result["bootstrap_95"] is None
    assert result["warnings"] == [
        "only 5 referable images (fewer than 30): intervals withheld, figures unreliable"
    ]
    data = {"validation": _split(rng, 20, "v"), "test": _split(rng, 200, "t")}
    _fake_runs(monkeypatch, data)
    summary = evaluate.evaluate(str(tmp_path), data_dir="d", splits=["validation", "test"],
                                out_dir=str(tmp_path / "out"), bootstrap_rounds=50)  # fmt: skip
    assert summary["splits"]["test"]["bootstrap_95"]["kappa"] is not None
    assert summary["splits"]["validation"]["bootstrap_95"] is None
    warnings = summary["warnings"]
    assert any(w.startswith("cut points fitted on only 40 validation images") for w in warnings)
    assert any(w.startswith("validation: only") for w in warnings)
    assert not any(w.startswith("test: ") for w in warnings)
    page = (tmp_path / "out" / "report.html").read_text()
    assert "cut points fitted on only 40 validation images" in page
    assert "images of 20 patients" in page and "images of 200 patients" in page


def test_report_appends_the_given_sections():
    result = clinical.summarize(np.array([0, 2]), np.eye(K)[[0, 2]] * 0.9 + 0.02,
                                bootstrap_rounds=0)  # fmt: skip
    page = report.render(
        {"test": result},
        {},
        {"model": "m"},
        [str(c) for c in range(K)],
        sections=[("Grad-CAM <nulls>", "<table><tr><td>x</td></tr></table>")],
    )
    assert "<h2>Grad-CAM &lt;nulls&gt;</h2>\n<table><tr><td>x</td></tr></table>" in page
    assert page.index("Grad-CAM") > page.index("<h2>test")


def test_the_paired_benchmark_resamples_patients_with_the_same_resampler():
    from benchmarks import paired

    rng = np.random.default_rng(9)
    labels, grades, score, patients = _eyes(rng, 100)
    probs = _probabilities(grades, rng)
    better = _probabilities(labels, rng, sharpness=3.0)
    got = paired.interval(labels, patients, (grades, probs), (better.argmax(1), better), 300)
    boot = clinical.ClusterBootstrap(patients, len(labels), rounds=300)
    dk = boot.kappa(labels, better.argmax(1), K) - boot.kappa(labels, grades, K)
    assert got["kappa"] == boot.interval(dk) and got["kappa"][0] > 0
    images = clinical.ClusterBootstrap(None, len(labels), rounds=300)
    dk = images.kappa(labels, better.argmax(1), K) - images.kappa(labels, grades, K)
    assert got["kappa"] != images.interval(dk)
