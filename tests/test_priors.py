"""Probabilities of a run trained on rebalanced classes, moved back to the natural class shares
(effdr_tf/evaluation/priors.py) and read through scoring.Run."""

import json

import numpy as np
import pytest

from configs import default
from effdr_tf.errors import EffdrError
from effdr_tf.evaluation import clinical, priors, scoring
from effdr_tf.pipeline import balance

K = 5
# EyePACS-like: most photographs grade 0.
COUNTS = [730, 70, 150, 25, 25]


def write_manifest(data_dir, counts=COUNTS):
    data_dir.mkdir(parents=True, exist_ok=True)
    manifest = {
        "num_classes": len(counts),
        "splits": {"train": {"count": sum(counts), "class_counts": {str(c): n for c, n in
                                                                     enumerate(counts)}}},
    }  # fmt: skip
    (data_dir / "manifest.json").write_text(json.dumps(manifest))


def run_config(data_dir, target="uniform", **balance_keys):
    config = default.get_config("tiny")
    config.data.data_dir = str(data_dir)
    config.data.batch_size = 10
    config.train.epochs = 2
    config.train.steps_per_epoch = 50
    config.balance.target = target
    for key, value in balance_keys.items():
        config.balance[key] = value
    return config


def bayes_posterior(x, prior):
    """p(k | x) for x | k ~ N(k, 1) under the class prior ``prior``."""
    log = -0.5 * (x[:, None] - np.arange(K)[None, :]) ** 2 + np.log(np.asarray(prior))[None, :]
    p = np.exp(log - log.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


def test_corrected_probabilities_are_the_bayes_posterior_under_the_natural_prior(tmp_path):
    """Grades with Gaussian class-conditional densities: a model trained under the sampler's
    uniform shares learns the posterior under those shares; corrected, it is the posterior
    under the data's shares, and its calibration error on natural data falls."""
    from sklearn.linear_model import LogisticRegression

    write_manifest(tmp_path)
    config = run_config(tmp_path, "uniform")
    prior = priors.correction(config, K)
    natural = np.asarray(COUNTS) / sum(COUNTS)
    np.testing.assert_allclose(prior["to"], natural)
    np.testing.assert_allclose(prior["from"], np.full(K, 1 / K))
    assert prior["source"] == str(tmp_path / "manifest.json")

    rng = np.random.default_rng(0)
    test_labels = rng.choice(K, 20_000, p=natural)
    test_x = test_labels + rng.normal(size=test_labels.size)
    # The exact posterior under the training shares, corrected, is the exact one under the
    # natural shares.
    balanced = bayes_posterior(test_x, prior["from"])
    corrected = np.asarray(priors.apply(balanced.astype(np.float32), prior), np.float64)
    np.testing.assert_allclose(corrected, bayes_posterior(test_x, natural), atol=1e-6)

    # A model fitted on samples drawn under the sampler's shares (logistic regression is the
    # Bayes posterior's own family here) learns the balanced posterior; corrected, it is close
    # to the natural one and its calibration error falls.
    train_labels = rng.choice(K, 20_000, p=prior["from"])
    model = LogisticRegression(C=100.0, max_iter=500)
    model.fit((train_labels + rng.normal(size=train_labels.size))[:, None], train_labels)
    learnt = model.predict_proba(test_x[:, None]).astype(np.float32)
    fixed = np.asarray(priors.apply(learnt, prior), np.float64)
    assert np.abs(fixed - bayes_posterior(test_x, natural)).max() < 0.03
    assert np.abs(learnt - bayes_posterior(test_x, natural)).max() > 0.3
    before = clinical.expected_calibration_error(test_labels, learnt)["ece"]
    after = clinical.expected_calibration_error(test_labels, fixed)["ece"]
    assert after < 0.02 < 0.1 < before, (before, after)
    # The referable score is moved too: fewer false referrals at the same threshold.
    referable = test_labels >= 2
    flagged_before = clinical.referable_score(learnt)[~referable] >= 0.5
    flagged_after = clinical.referable_score(fixed)[~referable] >= 0.5
    assert flagged_after.mean() < flagged_before.mean()


def test_training_shares_follow_the_samplers_schedule_to_the_end_of_training(tmp_path):
    """A moving target: the shares in force when the run ends are the ones the input
    pipeline's schedule emits at that example."""
    write_manifest(tmp_path)
    examples = 2 * 50 * 10  # epochs x steps x batch of run_config
    for transition in (4 * examples, examples // 2):
        config = run_config(
            tmp_path, "uniform", final_target="natural", transition_examples=transition
        )
        got = priors.training_shares(config, COUNTS)
        assert got["examples"] == examples
        start = balance.target_shares(COUNTS, "uniform")
        end = balance.target_shares(COUNTS, "natural")
        stream = balance.schedule(start, end, transition)
        in_force = next(iter(stream.skip(examples).take(1))).numpy()
        np.testing.assert_allclose(got["shares"], in_force, atol=1e-6)
        # The run's average lies between its start and its end.
        assert np.all(np.abs(got["average"] - start) <= np.abs(in_force - start) + 1e-9)
    # Reached natural before the end: nothing to correct.
    assert priors.correction(config, K) is None
    # A fixed target: its shares throughout.
    thesis = run_config(tmp_path, "balanced_sampler", multipliers=(1.0, 2.0, 1.0, 1.0, 1.0))
    np.testing.assert_allclose(
        priors.training_shares(thesis, COUNTS)["shares"],
        balance.target_shares(COUNTS, "balanced_sampler", (1.0, 2.0, 1.0, 1.0, 1.0)),
    )


def test_class_weights_in_the_loss_are_a_prior_too(tmp_path):
    write_manifest(tmp_path)
    config = run_config(tmp_path, "natural")
    weights = (0.5, 3.0, 1.0, 6.0, 6.0)
    config.train.class_weights = weights
    prior = priors.correction(config, K)
    weighted = np.asarray(COUNTS) * np.asarray(weights)
    np.testing.assert_allclose(prior["from"], weighted / weighted.sum())


def test_the_correction_needs_the_training_manifest_only_when_it_applies(tmp_path):
    missing = tmp_path / "moved"
    # Natural shares: nothing to read, nothing to correct.
    assert priors.correction(run_config(missing, "natural"), K) is None
    with pytest.raises(EffdrError, match=r"moved/manifest.json: not found") as e:
        priors.correction(run_config(missing, "uniform"), K)
    assert "\n" not in str(e.value) and "--noprior_correction" in str(e.value)
    with pytest.raises(EffdrError, match=r"^RUN/config.json: names no data.data_dir"):
        priors.correction(run_config("", "uniform"), K, "RUN/config.json")
    missing.mkdir()
    (missing / "manifest.json").write_text("{")
    with pytest.raises(EffdrError, match=r"moved/manifest.json: cannot read it"):
        priors.correction(run_config(missing, "uniform"), K)
    write_manifest(tmp_path / "three", [10, 5, 5])
    with pytest.raises(EffdrError, match="3 classes, but the run grades 5"):
        priors.correction(run_config(tmp_path / "three", "uniform"), K)
    write_manifest(tmp_path / "data")
    explicit = run_config(tmp_path / "data", "explicit", shares=(0.5, 0.5, 0.0, 0.0, 0.0))
    with pytest.raises(EffdrError, match=r"grade\(s\) \[2, 3, 4\] no share"):
        priors.correction(explicit, K)


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A run folder as train.py leaves it (config.json, export/model.keras) for a small
    model, with the manifest of its training data; trained under the sampler's shares."""
    import keras

    root = tmp_path_factory.mktemp("priorrun")
    write_manifest(root / "data")
    config = run_config(root / "data", "balanced_sampler")
    config.model.num_classes = K
    run_dir = root / "run"
    (run_dir / "export").mkdir(parents=True)
    (run_dir / "config.json").write_text(config.to_json())
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    outputs = keras.layers.Dense(K, name="predictions")(pooled)
    keras.Model(inputs, outputs).save(run_dir / scoring.MODEL_FILE)
    return root


def test_load_run_corrects_a_sampler_trained_run_by_default_and_records_it(saved_run, tmp_path):
    import shutil

    images = np.random.default_rng(1).uniform(0, 255, (6, 8, 8, 3)).astype(np.float32)
    run_dir = str(saved_run / "run")
    corrected = scoring.load_run(run_dir)
    raw = scoring.load_run(run_dir, prior_correction=False)
    assert raw.prior_correction is None
    recorded = corrected.prior_correction
    natural = np.asarray(COUNTS) / sum(COUNTS)
    np.testing.assert_allclose(recorded["to"], natural)
    np.testing.assert_allclose(recorded["from"], balance.target_shares(COUNTS, "balanced_sampler"))
    assert recorded["target"] == "balanced_sampler"
    json.dumps(recorded)  # goes into grading.json and the report as it is
    assert scoring.prior_corrections([raw, corrected]) == [None, recorded]
    assert scoring.prior_corrections([raw]) is None

    p_raw = np.asarray(raw.probabilities(images), np.float64)
    p = np.asarray(corrected.probabilities(images), np.float64)
    want = p_raw * natural / np.asarray(recorded["from"])
    np.testing.assert_allclose(p, want / want.sum(1, keepdims=True), rtol=1e-5)
    # The traced forward pass (scoring every split, TTA) gives the same corrected figures.
    traced = scoring._forward(corrected, "flip")(images).numpy()
    flipped = np.asarray(corrected.probabilities(images[:, :, ::-1]), np.float64)
    np.testing.assert_allclose(traced, (p + flipped) / 2, rtol=1e-5)
    # Ensembles load each run the same way.
    assert scoring.load_runs([run_dir])[0].prior_correction == recorded
    assert scoring.load_runs(run_dir, prior_correction=False)[0].prior_correction is None

    # Its data moved away: an error naming the manifest, unless the correction is off.
    moved = tmp_path / "run"
    shutil.copytree(run_dir, moved)
    config = json.loads((moved / "config.json").read_text())
    config["data"]["data_dir"] = str(tmp_path / "gone")
    (moved / "config.json").write_text(json.dumps(config))
    with pytest.raises(EffdrError, match=r"gone/manifest.json: not found"):
        scoring.load_run(str(moved))
    assert scoring.load_run(str(moved), prior_correction=False).prior_correction is None
    # A run trained under its data's own shares: no correction, no manifest needed.
    config["balance"]["target"] = "natural"
    (moved / "config.json").write_text(json.dumps(config))
    assert scoring.load_run(str(moved)).prior_correction is None


def test_points_fitted_under_one_correction_are_not_applied_under_another(saved_run):
    from effdr_tf.evaluation import evaluate, predict

    run_dir = str(saved_run / "run")
    corrected = scoring.load_run(run_dir)
    raw = scoring.load_run(run_dir, prior_correction=False)
    grading = evaluate._grading(evaluate.Fitted(), run_dir, [corrected], "none", (), {})
    assert grading["prior_correction"] == [corrected.prior_correction]
    evaluate._check_calibration(grading, "g.json", [corrected], "none", (), K)
    assert predict.check_grading(grading, "g.json", corrected, None, None) == ("none", [])
    message = "fitted on probabilities with the prior correction, scoring them without it"
    with pytest.raises(EffdrError, match="^g.json: .*" + message):
        evaluate._check_calibration(grading, "g.json", [raw], "none", (), K)
    with pytest.raises(EffdrError, match="^g.json: " + message):
        predict.check_grading(grading, "g.json", raw, None, None)
    # And the reverse: fitted without, applied with.
    plain = evaluate._grading(evaluate.Fitted(), run_dir, [raw], "none", (), {})
    assert plain["prior_correction"] is None
    with pytest.raises(EffdrError, match="without the prior correction, scoring them with it"):
        predict.check_grading(plain, "g.json", corrected, None, None)


def test_tflite_outputs_read_under_the_runs_correction(saved_run):
    import tensorflow as tf

    from effdr_tf.serving import export

    corrected = scoring.load_run(str(saved_run / "run"))
    # Small inputs: logits near zero, so the correction moves every probability.
    images = np.random.default_rng(2).uniform(0, 1, (4, 8, 8, 3)).astype(np.float32)
    model = tf.lite.TFLiteConverter.from_keras_model(corrected.model).convert()
    got = export.run_tflite(model, images, corrected.head, K, corrected.prior_correction)
    want = np.asarray(corrected.probabilities(images), np.float64)
    np.testing.assert_allclose(got, want, atol=1e-5)
    uncorrected = export.run_tflite(model, images, corrected.head, K)
    assert np.abs(uncorrected - want).max() > 0.01
