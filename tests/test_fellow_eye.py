"""The fellow-eye second stage: fitted on validation only, out-of-fold there, single-image
grades kept where there is no fellow eye, and better grades where the eyes agree."""

import numpy as np

from effdr_tf.evaluation import fellow_eye, metrics

K = 5


def _patients(n_patients, seed, one_eyed=0):
    """Both eyes share a grade; each eye's probabilities are a noisy view of it."""
    rng = np.random.default_rng(seed)
    grades = rng.choice(K, n_patients, p=[0.5, 0.15, 0.2, 0.1, 0.05])
    labels, patients, eyes, probs = [], [], [], []
    for p, g in enumerate(grades):
        for eye in ("right", "left")[: 1 if p < one_eyed else 2]:
            logits = -0.8 * (np.arange(K) - g) ** 2 + rng.normal(0, 1.6, K)
            e = np.exp(logits - logits.max())
            probs.append(e / e.sum())
            labels.append(g)
            patients.append(f"{seed}-{p}")
            eyes.append(eye)
    return np.array(probs), np.array(labels), np.array(patients), np.array(eyes)


def _kappa(labels, probs):
    return metrics.quadratic_weighted_kappa(metrics.confusion_matrix(labels, probs.argmax(1), K))


def test_fellow_probabilities_pair_the_other_eye_only():
    probs = np.eye(K)[[0, 1, 2, 3]]
    fellow, has = fellow_eye.fellow_probabilities(
        probs, ["a", "a", "b", "c"], ["right", "left", "right", ""]
    )
    np.testing.assert_array_equal(has, [True, True, False, False])
    np.testing.assert_array_equal(fellow[0], probs[1])
    np.testing.assert_array_equal(fellow[1], probs[0])


def test_reading_both_eyes_improves_held_out_grades_and_keeps_one_eyed_patients():
    val = _patients(300, seed=1)
    test = _patients(300, seed=2, one_eyed=60)
    stage = fellow_eye.fit(*val)
    second = stage.apply(test[0], test[2], test[3])
    np.testing.assert_allclose(second.sum(1), 1.0, atol=1e-9)
    one_eyed = np.isin(test[2], [f"2-{p}" for p in range(60)])
    np.testing.assert_array_equal(second[one_eyed], test[0][one_eyed])  # unchanged
    both = ~one_eyed
    before, after = _kappa(test[1][both], test[0][both]), _kappa(test[1][both], second[both])
    assert after > before + 0.02, (before, after)


def test_out_of_fold_scores_never_read_their_own_labels():
    probs, labels, patients, eyes = _patients(200, seed=3)
    oof = fellow_eye.out_of_fold(probs, labels, patients, eyes)
    changed = labels.copy()
    changed[0] = (labels[0] + 2) % K  # patient 0's right eye relabelled
    changed[1] = (labels[1] + 2) % K  # and the left
    again = fellow_eye.out_of_fold(probs, changed, patients, eyes)
    np.testing.assert_array_equal(oof[:2], again[:2])  # scored by stages fitted without them
    assert np.abs(oof - again).max() > 0  # the others' stages did see the change


def test_a_validation_without_pairs_fits_nothing_and_changes_nothing():
    probs, labels, patients, _ = _patients(20, seed=4)
    stage = fellow_eye.fit(probs, labels, patients, np.array([""] * len(labels)))
    assert stage.model is None
    np.testing.assert_array_equal(stage.apply(probs, patients, ["left"] * len(labels)), probs)


def test_validation_kappa_at_cut_points_is_fitted_inside_the_folds():
    """Cut points fitted on all of validation's out-of-fold output and read on it are
    in-sample: small and noisy, it overfits. Fitted inside the folds, a patient's grades never
    depend on its own labels, and the figure is no longer the in-sample one."""
    from effdr_tf.evaluation import thresholds

    probs, labels, patients, eyes = _patients(40, seed=5)
    second = fellow_eye.out_of_fold(probs, labels, patients, eyes)
    scores = thresholds.expected_grade(second)
    cuts, in_sample = thresholds.fit(scores, labels, K)
    grades = fellow_eye.out_of_fold_grades(second, labels, patients, K)
    got = metrics.quadratic_weighted_kappa(metrics.confusion_matrix(labels, grades, K))
    assert got < in_sample - 0.01, (got, in_sample)
    from effdr_tf.evaluation import clinical

    held = clinical.folds(patients, len(patients)) == 0
    changed = labels.copy()
    changed[held] = (labels[held] + 2) % K  # every patient of one fold relabelled
    again = fellow_eye.out_of_fold_grades(second, changed, patients, K)
    np.testing.assert_array_equal(grades[held], again[held])
    assert (grades[~held] != again[~held]).any()  # the other folds' cut points saw it


def test_a_fitted_stage_survives_grading_json():
    import json

    val = _patients(120, seed=6)
    stage = fellow_eye.fit(*val)
    back = fellow_eye.Stage.from_json(json.loads(json.dumps(stage.to_json())))
    test = _patients(50, seed=7)
    np.testing.assert_allclose(
        back.apply(test[0], test[2], test[3]), stage.apply(test[0], test[2], test[3]), atol=1e-9
    )
