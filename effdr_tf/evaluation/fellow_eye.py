"""A second stage that grades each photograph together with its fellow eye's outputs.

The two eyes of a patient share the disease that causes DR, and their grades agree in most
patients; the top Kaggle 2015 solutions used that (Ben Graham's random forest over both eyes'
outputs, the o_O team's per-patient blend, De Fauw's network that merged both eyes). Here the
first stage is any run (or ensemble); the second is a multinomial logistic regression on the log
class probabilities of the image and of its fellow eye (the mean over that patient's images of
the other eye), so it learns how much the fellow eye should move a grade.

It is fitted on validation predictions only. Its figures on validation come from out-of-fold
predictions (folds of patients, each scored by a stage fitted on the other folds), and so do the
grades at its cut points there (``out_of_fold_grades``: each fold's cut points are fitted on the
other folds' out-of-fold output); every other split is scored by the stage fitted on all of
validation. Photographs without a fellow eye keep their single-image probabilities unchanged.
The fitted stage travels in grading.json (``Stage.to_json``) so that an external test set can
be scored by it (``eval.py --calibration``).

``fit(..., own_only=True)`` gives the control stage of the same form: the same regression on the
same images (those with a fellow eye) but on the image's own log probabilities only, so it
recalibrates without seeing the fellow eye; the difference between the two stages is what the
fellow eye adds.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from effdr_tf.evaluation import clinical
from effdr_tf.evaluation import thresholds as grade_thresholds

FOLDS = clinical.FOLDS
# Inverse L2 strength of the logistic regression: validation sets are small (hundreds of
# images), and 2K features of log probabilities need little freedom.
REGULARIZATION_C = 1.0
_EPS = 1e-6


def fellow_probabilities(probabilities, patient_ids, eyes) -> tuple[np.ndarray, np.ndarray]:
    """For each image, the mean probabilities of its patient's images of the other eye, and a
    mask of the images that have one (patient id known, eye ``left`` or ``right``)."""
    probabilities = np.asarray(probabilities, np.float64)
    patients = np.asarray(patient_ids).astype(str)
    eyes = np.asarray(eyes).astype(str)
    fellow = np.zeros_like(probabilities)
    has = np.zeros(len(patients), bool)
    groups: dict[tuple[str, str], list[int]] = {}
    for i, (patient, eye) in enumerate(zip(patients, eyes, strict=True)):
        if patient and eye in ("left", "right"):
            groups.setdefault((patient, eye), []).append(i)
    for (patient, eye), rows in groups.items():
        other = groups.get((patient, "left" if eye == "right" else "right"))
        if other:
            fellow[rows] = probabilities[other].mean(axis=0)
            has[rows] = True
    return fellow, has


def _features(own, fellow, own_only: bool = False) -> np.ndarray:
    if own_only:
        return np.log(own + _EPS)
    return np.concatenate([np.log(own + _EPS), np.log(fellow + _EPS)], axis=1)


class _Linear:
    """A multinomial logistic regression's prediction from its coefficients (as read back from
    grading.json): softmax of the linear scores, or the sigmoid with two classes, as
    scikit-learn's ``LogisticRegression.predict_proba`` computes them."""

    def __init__(self, coef, intercept, classes):
        self.coef_ = np.asarray(coef, np.float64)
        self.intercept_ = np.asarray(intercept, np.float64)
        self.classes_ = np.asarray(classes, np.int64)

    def predict_proba(self, features):
        z = np.asarray(features, np.float64) @ self.coef_.T + self.intercept_
        if self.coef_.shape[0] == 1:
            p = 1.0 / (1.0 + np.exp(-z[:, 0]))
            return np.stack([1 - p, p], axis=1)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)


@dataclasses.dataclass
class Stage:
    """A fitted second stage; ``None`` model when validation could not fit one."""

    num_classes: int
    model: object | None
    fitted_on: int  # validation images with a fellow eye
    own_only: bool = False  # the control stage: the image's own probabilities only

    def apply(self, probabilities, patient_ids, eyes) -> np.ndarray:
        """Second-stage probabilities; images without a fellow eye keep theirs."""
        probabilities = np.asarray(probabilities, np.float64)
        out = probabilities.copy()
        if self.model is None:
            return out
        fellow, has = fellow_probabilities(probabilities, patient_ids, eyes)
        if has.any():
            scored = self.model.predict_proba(
                _features(probabilities[has], fellow[has], self.own_only)
            )
            full = np.zeros((int(has.sum()), self.num_classes))
            full[:, self.model.classes_] = scored  # grades absent from validation get 0
            out[has] = full
        return out

    def to_json(self) -> dict:
        """What ``from_json`` needs to re-create the stage: its coefficients."""
        extra = {"own_only": True} if self.own_only else {}
        if self.model is None:
            return {
                "num_classes": self.num_classes,
                "fitted_on": self.fitted_on,
                "model": None,
                **extra,
            }
        return {
            "num_classes": self.num_classes,
            "fitted_on": self.fitted_on,
            **extra,
            "model": {
                "coef": np.asarray(self.model.coef_).tolist(),
                "intercept": np.asarray(self.model.intercept_).tolist(),
                "classes": np.asarray(self.model.classes_).tolist(),
            },
        }

    @classmethod
    def from_json(cls, value: dict) -> Stage:
        model = value.get("model")
        if model is not None:
            model = _Linear(model["coef"], model["intercept"], model["classes"])
        return cls(
            int(value["num_classes"]),
            model,
            int(value["fitted_on"]),
            bool(value.get("own_only", False)),
        )


def fit(probabilities, labels, patient_ids, eyes, *, own_only: bool = False) -> Stage:
    """The stage fitted on (validation) images that have a fellow eye; ``own_only``: on their
    own probabilities only (the control stage)."""
    from sklearn.linear_model import LogisticRegression

    probabilities = np.asarray(probabilities, np.float64)
    labels = np.asarray(labels)
    k = probabilities.shape[1]
    fellow, has = fellow_probabilities(probabilities, patient_ids, eyes)
    if has.sum() < 2 or len(np.unique(labels[has])) < 2:
        return Stage(k, None, int(has.sum()), own_only)
    model = LogisticRegression(C=REGULARIZATION_C, max_iter=10000)
    model.fit(_features(probabilities[has], fellow[has], own_only), labels[has])
    return Stage(k, model, int(has.sum()), own_only)


def out_of_fold(
    probabilities, labels, patient_ids, eyes, *, folds=FOLDS, seed=0, own_only: bool = False
) -> np.ndarray:
    """Second-stage probabilities for every image of one split, each scored by a stage fitted
    on the other folds of patients (never on its own patient); ``own_only`` as in ``fit``."""
    patients = np.asarray(patient_ids).astype(str)
    fold = clinical.folds(patients, len(patients), count=folds, seed=seed)
    probabilities = np.asarray(probabilities, np.float64)
    out = probabilities.copy()
    labels = np.asarray(labels)
    eyes = np.asarray(eyes).astype(str)
    for f in range(folds):
        held = fold == f
        if held.any():
            stage = fit(
                probabilities[~held],
                labels[~held],
                patients[~held],
                eyes[~held],
                own_only=own_only,
            )
            out[held] = stage.apply(probabilities[held], patients[held], eyes[held])
    return out


def out_of_fold_grades(second, labels, patient_ids, num_classes: int, *, folds=FOLDS, seed=0):
    """Grades at cut points on the expected grade of the out-of-fold second-stage output
    ``second`` (``out_of_fold``), each fold's cut points fitted on the other folds (the same
    folds as ``out_of_fold``), so that validation's kappa at cut points is never in-sample;
    None when a fold's complement has fewer than two grades."""
    patients = np.asarray(patient_ids).astype(str)
    fold = clinical.folds(patients, len(patients), count=folds, seed=seed)
    return clinical.out_of_fold_grades(
        grade_thresholds.expected_grade(second), labels, fold, num_classes
    )
