"""The semi-synthetic DR data: grades only readable from lesions, lesions visible at 224 px."""

import collections

import cv2
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import cohen_kappa_score
from sklearn.model_selection import cross_val_predict

from effdr_tf.data import fundus, synthetic


def test_grade_is_not_readable_from_image_statistics():
    """Exposure, colour and focus vary independently of the grade and swamp the lesions'
    effect on image-level statistics."""
    features, grades = [], []
    for index in range(300):
        grade = index % 5
        image, _ = synthetic.generate(grade, index, seed=3, size=448)
        image = fundus.crop_and_resize(image, 224).reshape(-1, 3).astype(np.float32)
        features.append(np.concatenate([image.mean(0), image.std(0)]))
        grades.append(grade)
    features = np.asarray(features)
    features = (features - features.mean(0)) / features.std(0)
    predicted = cross_val_predict(LogisticRegression(max_iter=2000), features, grades, cv=5)
    kappa = cohen_kappa_score(grades, predicted, weights="quadratic")
    assert kappa < 0.2, kappa


def test_grade_two_lesions_survive_resizing_to_224():
    with_lesions, alpha = synthetic.generate(2, 5, seed=0, size=448)
    without, _ = synthetic.generate(2, 5, seed=0, size=448, lesions=False)
    small_with = cv2.resize(with_lesions, (224, 224), interpolation=cv2.INTER_AREA).astype(float)
    small_without = cv2.resize(without, (224, 224), interpolation=cv2.INTER_AREA).astype(float)
    small_alpha = cv2.resize(alpha, (224, 224), interpolation=cv2.INTER_AREA)
    lesion = small_alpha > 0.5
    assert lesion.sum() >= 20  # dozens of lesion pixels at 224 px
    difference = np.abs(small_with - small_without).mean(axis=2)
    assert difference[lesion].mean() > 40
    assert difference[small_alpha == 0].mean() < 1.0  # the rest of the image is untouched


def test_more_severe_grades_have_more_lesion_area():
    areas = collections.defaultdict(list)
    for index in range(40):
        grade = index % 5
        _, alpha = synthetic.generate(grade, index, seed=1, size=448)
        areas[grade].append(float(alpha.sum()))
    means = [np.mean(areas[g]) for g in range(5)]
    assert means[0] == 0
    assert means[0] < means[1] < means[2] < means[3] < means[4]


def test_grade_shares_and_correlated_eyes():
    assigned = synthetic.assign_grades(20000, seed=0)
    grades = np.array([g for _, _, g in assigned])
    shares = np.bincount(grades, minlength=5) / len(grades)
    np.testing.assert_allclose(shares, synthetic.EYEPACS_SHARES, atol=0.02)
    same = np.mean(grades[0::2] == grades[1::2])
    p = np.asarray(synthetic.EYEPACS_SHARES)
    expected = synthetic.SAME_GRADE_BOTH_EYES + (1 - synthetic.SAME_GRADE_BOTH_EYES) * (p**2).sum()
    assert abs(same - expected) < 0.02
    assert {e for _, e, _ in assigned} == {"left", "right"}


def test_deterministic_for_a_seed():
    a, _ = synthetic.generate(3, 17, seed=5, size=448, eye="left")
    b, _ = synthetic.generate(3, 17, seed=5, size=448, eye="left")
    c, _ = synthetic.generate(3, 17, seed=6, size=448, eye="left")
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c).mean() > 1


def test_lesion_view_is_what_the_builder_writes_with_its_lesions_aligned():
    from effdr_tf.data.sources.synthetic_dr import SyntheticDR

    source = SyntheticDR(num_images=40, seed=5, image_size=96)
    record = next(r for r in source.scan() if r.label >= 3)
    image, lesions = source.lesion_view(record, 96)
    np.testing.assert_array_equal(image, fundus.preprocess(source.load(record), "crop", 96))
    assert lesions.shape == (96, 96) and lesions.max() > 0.9
    # Painted lesions are dark red or pale: where the map is high the image differs from the
    # same photograph drawn without lesions; where it is zero it does not.
    index = int(record.path.rsplit("/", 1)[1])
    bare, _ = synthetic.generate(
        record.label, index, 5, size=source.work_size, eye=record.eye, lesions=False
    )
    bare = fundus.preprocess(bare, "crop", 96).astype(np.float32)
    change = np.abs(image.astype(np.float32) - bare).max(axis=2)
    assert change[lesions > 0.5].mean() > 5 * max(change[lesions == 0].mean(), 1.0)


def test_hard_preset_draws_fainter_fewer_lesions_on_the_same_photographs():
    hard = synthetic.PRESETS["hard"]
    plain0, _ = synthetic.generate(0, 5, 0, size=256)
    hard0, _ = synthetic.generate(0, 5, 0, size=256, style=hard)
    np.testing.assert_array_equal(plain0, hard0)  # no findings: the same photograph
    for grade in range(1, 5):
        areas = []
        for style in (synthetic.PRESETS["standard"], hard):
            areas.append(
                np.mean(
                    [
                        synthetic.generate(grade, i, 0, size=256, style=style)[1].sum()
                        for i in range(6)
                    ]
                )  # fmt: skip
            )
        assert 0 < areas[1] < 0.5 * areas[0], (grade, areas)


def test_hard_preset_labels_cross_neighbouring_boundaries_at_the_stated_rates():
    from effdr_tf.data.sources.synthetic_dr import SyntheticDR

    rates = synthetic.PRESETS["hard"].boundary_noise
    grades = np.repeat(np.arange(5), 4000)
    labels = np.array(synthetic.noisy_labels(grades, 0, rates))
    assert np.all(np.abs(labels - grades) <= 1)
    for b, rate in enumerate(rates):
        assert abs(np.mean(labels[grades == b] == b + 1) - rate / 2) < 0.012
        assert abs(np.mean(labels[grades == b + 1] == b) - rate / 2) < 0.012
    assert synthetic.noisy_labels(grades, 0, (0, 0, 0, 0)) == grades.tolist()

    source = SyntheticDR(num_images=400, image_size=64, preset="hard")
    records = list(source.scan())
    drawn = [g for _, _, g in synthetic.assign_grades(400, 0)]
    moved = np.mean([r.label != g for r, g in zip(records, drawn, strict=True)])
    assert 0.01 < moved < 0.15
    assert source.describe()["preset"] == "hard"
    plain = SyntheticDR(num_images=400, image_size=64)
    assert [r.label for r in plain.scan()] == drawn


def test_builder_offers_every_preset():
    import ast
    import pathlib
    import re

    text = (pathlib.Path(__file__).parents[1] / "tfrecord_builder.py").read_text()
    offered = re.search(r'"synthetic_preset",\s*"standard",\s*(\[[^\]]*\])', text).group(1)
    assert sorted(ast.literal_eval(offered)) == sorted(synthetic.PRESETS)
