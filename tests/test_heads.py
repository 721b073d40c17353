"""Output heads: softmax, regression and ordinal (CORN) read as class probabilities, trained,
evaluated and exported."""

import json
import os
import sys

import numpy as np
import pytest

from effdr_tf.models import heads
from effdr_tf.training import options
from tests.test_pipeline import build_tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K = 5


def test_options_know_the_same_heads_as_the_models():
    assert options.HEADS == heads.HEADS
    assert options.REGRESSION_LOSSES == heads.REGRESSION_LOSSES


def test_ordinal_probabilities_are_rank_consistent_and_sum_to_one():
    rng = np.random.default_rng(0)
    outputs = np.concatenate(
        [rng.normal(0, 3, (500, K - 1)), rng.choice([-60.0, 60.0], (20, K - 1))]
    ).astype(np.float32)
    above = np.asarray(heads.exceedance(outputs))
    assert np.all(np.diff(above, axis=1) <= 0)  # P(y > k) never rises with k
    probs = np.asarray(heads.probabilities(outputs, "ordinal", K))
    assert probs.shape == (520, K)
    assert probs.min() >= 0
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    # P(y > k) read back from the class probabilities.
    np.testing.assert_allclose(1 - np.cumsum(probs, 1)[:, :-1], above, atol=1e-6)


def test_corn_loss_is_the_negative_log_likelihood_of_its_probabilities():
    rng = np.random.default_rng(1)
    outputs = rng.normal(0, 2, (200, K - 1)).astype(np.float32)
    labels = rng.integers(0, K, 200)
    loss = np.asarray(heads.per_example_loss(labels, outputs, "ordinal", K))
    probs = np.asarray(heads.probabilities(outputs, "ordinal", K), np.float64)
    np.testing.assert_allclose(loss, -np.log(probs[np.arange(200), labels]), rtol=1e-4)
    # Large logits stay finite.
    big = np.full((2, K - 1), 80.0, np.float32)
    assert np.all(np.isfinite(heads.per_example_loss(np.array([0, 4]), big, "ordinal", K)))


def test_regression_probabilities_round_the_grade_and_keep_its_order():
    y = np.linspace(-1.5, 5.5, 701, dtype=np.float32)[:, None]
    probs = np.asarray(heads.probabilities(y, "regression", K), np.float64)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    assert probs.min() >= 0
    frac = np.abs(y[:, 0] - np.round(y[:, 0]))
    inside = np.abs(frac - 0.5) > 1e-3  # not at ties, k + 0.5
    # The open-ended bins of grades 0 and K-1 reach a little past 0.5 and K - 1.5.
    shift = heads.REGRESSION_ARGMAX_SHIFT
    inside &= ~((y[:, 0] > 0.5) & (y[:, 0] < 0.5 + shift))
    inside &= ~((y[:, 0] < K - 1.5) & (y[:, 0] > K - 1.5 - shift))
    np.testing.assert_array_equal(
        probs.argmax(1)[inside], np.clip(np.round(y[:, 0]), 0, K - 1)[inside]
    )
    # The shift is the stated one: just past it the rounded grade wins again.
    edge = np.array([[0.5 + shift - 1e-4], [0.5 + shift + 1e-4]], np.float64)
    assert list(np.asarray(heads.probabilities(edge, "regression", K, "float64")).argmax(1)) == [
        0,
        1,
    ]
    expected = probs @ np.arange(K)
    referable = probs[:, 2:].sum(1)
    assert np.all(np.diff(expected) > 0)
    middle = (y[:, 0] > -1) & (y[:, 0] < 4.5)  # float32 keeps the order where it is not ~0 or 1
    assert np.all(np.diff(referable[middle]) > 0)


def test_regression_referable_score_rises_over_the_whole_line_and_never_saturates_early():
    """P(grade >= 2) is a logistic CDF of the output: strictly increasing from -2 to 8 and
    below 1 in float64, never falling in float32 and below 1 there up to y = 5."""
    wide = np.linspace(-200.0, 200.0, 400_001, dtype=np.float32)[:, None]
    p32 = np.asarray(heads.probabilities(wide, "regression", K))
    assert p32.dtype == np.float32 and p32.min() >= 0
    assert np.all(np.diff(p32[:, 2:].sum(1)) >= 0)
    assert np.all(np.diff(p32 @ np.arange(K, dtype=np.float32)) >= 0)
    up_to_5 = np.asarray(
        heads.probabilities(np.linspace(-2.0, 5.0, 1401)[:, None], "regression", K)
    )
    assert up_to_5[:, 2:].sum(1).max() < 1.0

    y = np.linspace(-2.0, 8.0, 2001)[:, None]
    p64 = np.asarray(heads.probabilities(y, "regression", K, dtype="float64"))
    assert p64.dtype == np.float64
    np.testing.assert_allclose(p64.sum(1), 1.0, atol=1e-12)
    referable = p64[:, 2:].sum(1)
    assert np.all(np.diff(referable) > 0) and referable.max() < 1.0
    assert np.all(np.diff(p64 @ np.arange(K)) > 0)
    z = (y[:, 0] - 1.5) / heads.REGRESSION_SCALE
    np.testing.assert_allclose(referable, 1.0 / (1.0 + np.exp(-z)), rtol=1e-12)


def test_only_the_regression_head_says_its_calibration_measures_a_chosen_width():
    note = heads.calibration_note("regression")
    assert str(heads.REGRESSION_SCALE) in note and "not the model" in note
    assert heads.calibration_note("softmax") is None and heads.calibration_note("ordinal") is None


def test_regression_losses():
    labels = np.array([0, 2, 4])
    out = np.array([[0.5], [4.0], [4.0]], np.float32)
    mse = np.asarray(heads.per_example_loss(labels, out, "regression", K))
    huber = np.asarray(
        heads.per_example_loss(labels, out, "regression", K, regression_loss="smooth_l1")
    )
    np.testing.assert_allclose(mse, [0.25, 4.0, 0.0])
    np.testing.assert_allclose(huber, [0.125, 1.5, 0.0])


def test_a_head_other_than_softmax_refuses_label_smoothing():
    from configs import default

    config = default.get_config("tiny")
    config.model.head = "ordinal"
    config.train.label_smoothing = 0.1
    with pytest.raises(Exception, match="label_smoothing"):
        options.check(config)
    config.model.head = "hinge"
    config.train.label_smoothing = 0.0
    with pytest.raises(Exception, match="model.head='hinge'"):
        options.check(config)


@pytest.fixture(scope="module")
def head_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("heads")
    counts = {"train": [16, 12, 12, 10, 10], "validation": [5, 4, 4, 3, 4]}
    build_tiny(root / "data", counts, textured=True)
    return root / "data"


@pytest.mark.parametrize("head", ["regression", "ordinal"])
def test_each_head_trains_evaluates_and_exports(head, head_data, tmp_path):
    """A run records its head; evaluation reads it; the SavedModel and the TFLite file give the
    Keras model's class probabilities."""
    sys.path.insert(0, os.path.join(REPO, "tests"))
    import tiny_config

    from effdr_tf.evaluation import evaluate, scoring
    from effdr_tf.serving import export
    from effdr_tf.training import loop

    config = tiny_config.get_config()
    config.data.data_dir = str(head_data)
    config.model.head = head
    config.train.epochs = 1
    config.train.export = True
    if head == "regression":
        config.train.regression_loss = "smooth_l1"
    run_dir = tmp_path / "run"
    loop.train(config, str(run_dir), progress=False)
    recorded = json.loads((run_dir / "config.json").read_text())["model"]
    assert (recorded["head"], recorded["num_classes"]) == (head, K)

    run = scoring.load_run(str(run_dir))
    assert (run.head, run.num_classes) == (head, K)
    assert run.model.output_shape[-1] == heads.output_units(head, K)
    result = evaluate.evaluate(
        str(run_dir), splits=["validation"], out_dir=str(tmp_path / "eval"), bootstrap_rounds=0
    )
    scored = result["splits"]["validation"]
    assert scored["count"] == 20 and -1 <= scored["kappa"] <= 1

    report = export.export(str(run_dir), formats=["saved_model", "float32"], check_images=8)
    assert report["saved_model"]["max_abs_diff"] <= 1e-5
    assert report["float32"]["max_abs_diff"] <= 1e-4


def test_regression_head_starts_within_a_few_grades():
    """Over fan-in the first outputs are about a grade wide; the reference's fan-out scaling
    would put a single output tens of grades away."""
    import keras

    from effdr_tf.models import build_efficientnet

    images = np.random.default_rng(0).uniform(0, 255, (16, 32, 32, 3)).astype(np.float32)
    spread = {}
    for name, init in (("ours", heads.kernel_initializer("regression")), ("reference", None)):
        keras.utils.set_random_seed(0)
        model = build_efficientnet(
            "tiny", num_classes=1, input_shape=(32, 32, 3), classifier_initializer=init
        )
        spread[name] = float(np.sqrt(np.mean(np.square(model(images, training=False)))))
    assert spread["ours"] < 2.0 and spread["reference"] > 4 * spread["ours"], spread
    assert heads.kernel_initializer("softmax") is None
