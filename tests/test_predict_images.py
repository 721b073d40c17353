"""Decisions on new photographs: which rule makes `referable`, and which grading.json may be
applied to a run (NumPy level; eval.py --images end to end is in test_evaluation.py)."""

import types

import numpy as np
import pytest

from effdr_tf.errors import EffdrError
from effdr_tf.evaluation import predict


def _grading(**changes) -> dict:
    """A grading.json's content by the schema eval.py writes (format 2)."""
    grading = {
        "format": 2,
        "model_dir": "RUN",
        "runs": 1,
        "head": ["softmax"],
        "tta": "none",
        "tta_rotations": [],
        "prior_correction": None,
        "fitted_on": {"data_dir": "DATA", "split": "validation", "images": 40, "patients": 20},
        "cut_points": [0.5, 1.5, 2.5, 3.5],
        "operating_points": {"high_sensitivity": 0.2, "high_specificity": 0.7},
        "patient_operating_points": None,
        "patient_cut_points": None,
        "fellow_eye": None,
        "validation_kappa_argmax": 0.5,
        "validation_kappa_fitted": 0.6,
    }
    return grading | changes


RUN = types.SimpleNamespace(head="softmax", model_dir="RUN", prior_correction=None)


def _decide(probabilities, rule, grading):
    """The referable column for each row of ``probabilities`` under ``rule``."""
    cuts = predict._cut_points(grading, "g.json", 5)
    decision = predict.referable_rule(grading, "g.json", rule, cuts)
    out = []
    for p in np.asarray(probabilities, np.float64):
        score = float(p[2:].sum())
        fitted = "" if cuts is None else int(np.searchsorted(cuts, (p * np.arange(5)).sum()))
        out.append(predict._referable(p, score, fitted, decision))
    return out, decision


def test_referable_follows_the_validated_operating_point_not_the_argmax():
    """A photograph whose argmax is grade 1 but whose referable score (0.35) passes the
    high-sensitivity threshold (0.2) is referred; at the high-specificity point (0.7) it is
    not; argmax (>= 2) would never refer it."""
    p = [[0.05, 0.60, 0.20, 0.10, 0.05]]  # argmax 1, referable score 0.35
    got, decision = _decide(p, "high_sensitivity", _grading())
    assert got == [1] and decision["threshold"] == 0.2
    assert "high_sensitivity operating point" in predict.describe_rule(decision)
    assert "referable score >= 0.2" in predict.describe_rule(decision)
    got, decision = _decide(p, "high_specificity", _grading())
    assert got == [0] and decision["threshold"] == 0.7
    assert _decide(p, "argmax", None)[0] == [0]
    # Expected grade 1.4 reads as grade 1 at cut points 0.5, 1.5, ...; at 1.3, 1.35, ... as 2.
    assert _decide(p, "grade_fitted", _grading())[0] == [0]
    assert _decide(p, "grade_fitted", _grading(cut_points=[0.5, 1.3, 2.5, 3.5]))[0] == [1]


def test_without_operating_points_referable_is_empty_and_says_why():
    p = [[0.0, 0.0, 0.0, 0.0, 1.0]]
    got, decision = _decide(p, "high_sensitivity", None)
    assert got == [""] and "no grading.json" in predict.describe_rule(decision)
    got, decision = _decide(p, "high_specificity", _grading(operating_points=None))
    assert got == [""] and "g.json has no high_specificity operating point" in decision["why"]
    got, decision = _decide(p, "grade_fitted", _grading(cut_points=None))
    assert got == [""] and "no cut points" in decision["why"]


@pytest.mark.parametrize(
    ("grading", "tta", "rotations", "message"),
    [
        (_grading(head=["regression"]), None, None, "fitted on a regression head; RUN has a "),
        (_grading(runs=2, head=["softmax", "softmax"]), None, None, "an ensemble of 2 runs"),
        (_grading(tta="flip"), "dihedral", None, "fitted with --tta=flip; grading with --tta"),
        (_grading(tta="flip"), "none", None, "leave --tta out to apply flip"),
        (_grading(tta_rotations=[10.0, -10.0]), None, ["10"], "--tta_rotations=10,-10; "),
        (
            _grading(prior_correction=[{"ratio": [0.5, 1.0, 1.0, 2.0, 2.0]}]),
            None,
            None,
            "fitted on probabilities with the prior correction, scoring them without it",
        ),
    ],
)
def test_a_grading_file_of_another_kind_of_output_is_one_error(grading, tta, rotations, message):
    with pytest.raises(EffdrError, match="^g.json: .*" + message.replace("(", r"\(")):
        predict.check_grading(grading, "g.json", RUN, tta, rotations)


def test_the_grading_files_test_time_views_are_applied_unless_given_the_same():
    grading = _grading(tta="dihedral", tta_rotations=[10, -10])
    assert predict.check_grading(grading, "g.json", RUN, None, None) == ("dihedral", [10.0, -10.0])
    got = predict.check_grading(grading, "g.json", RUN, "dihedral", ["10", "-10"])
    assert got == ("dihedral", [10.0, -10.0])


def test_a_glob_pattern_lists_the_files_it_matches_sorted(tmp_path):
    """--images=PATTERN (both runners): the matching files sorted, folders left out, non-image
    names kept for their rows; a folder whose name looks like a pattern is still a folder."""
    for name in ("b.png", "a.jpg", "notes.txt", "c.jpeg"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "d.png").mkdir()
    odd = tmp_path / "eye[1]"
    odd.mkdir()
    (odd / "x.png").write_bytes(b"")
    got = predict.list_images(str(tmp_path / "*.*"))
    assert got == [str(tmp_path / n) for n in ("a.jpg", "b.png", "c.jpeg", "notes.txt")]
    assert predict.list_images(str(tmp_path / "[ab].*")) == got[:2]
    assert predict.list_images(str(odd)) == [str(odd / "x.png")]
    with pytest.raises(EffdrError, match=r"\*\.tif: the pattern matches no file$"):
        predict.list_images(str(tmp_path / "*.tif"))
    with pytest.raises(EffdrError, match=r"notes\?txt: no images \(.jpg, .*\) among the matches"):
        predict.list_images(str(tmp_path / "notes?txt"))


def test_a_remote_photograph_is_prepared_as_a_local_one(tmp_path):
    """Paths tf.io.gfile reads (gs://; here its in-memory ram://) are listed by a pattern and
    prepared to the same model input as the same file on disk."""
    import cv2
    import tensorflow as tf

    from effdr_tf.data import fundus, synthetic

    image, _ = synthetic.generate(2, 0, size=96)
    data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()
    (tmp_path / "a.jpg").write_bytes(data)
    folder = "ram://remote_photographs"
    tf.io.gfile.makedirs(folder)
    with tf.io.gfile.GFile(f"{folder}/a.jpg", "wb") as f:
        f.write(data)
    assert predict.list_images(f"{folder}/*.jpg") == [f"{folder}/a.jpg"]
    preparation = predict.Preparation(size=32)
    local = predict.prepare_photograph(str(tmp_path / "a.jpg"), preparation)
    assert predict.prepare_photograph(f"{folder}/a.jpg", preparation) == local
    with pytest.raises(fundus.RejectedImageError, match="^cannot read file: No such file"):
        predict.prepare_photograph(f"{folder}/missing.jpg", preparation)
