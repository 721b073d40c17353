"""eval.py's work: score splits with a trained run, write metrics.json, figures and report.html.

Nothing is fitted on the split it is reported on. The referable operating points, the grade cut
points on the expected grade, their patient-level counterparts and the fellow-eye second stage
are fitted on the validation split and applied unchanged to every other split; they are written
to ``grading.json`` (for ``eval.py --images``, and for ``--calibration``). The validation
split's own figures at them are out-of-fold: five folds of patients, each scored by points
fitted on the other four.

An external test set (Messidor-2, IDRiD) has no validation split of its own: ``--calibration``
takes them from another evaluation's grading.json instead (``load_calibration``). With neither,
none are reported, and the report says why.

Every interval is a cluster bootstrap over patients (``clinical.ClusterBootstrap``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import time

import numpy as np
import tensorflow as tf

from effdr_tf import constants, fileio
from effdr_tf.data.schema import UNLABELLED
from effdr_tf.errors import EffdrError
from effdr_tf.evaluation import clinical, fellow_eye, metrics, plots, priors, report, scoring
from effdr_tf.evaluation import thresholds as grade_thresholds
from effdr_tf.models import heads
from effdr_tf.pipeline import input as pipeline

VALIDATION = "validation"
GRADING_FILE = "grading.json"
GRADING_FORMAT = 2
NONE_WITHOUT_VALIDATION = "none: no validation split and no --calibration"


def _predictions_csv(scored: dict) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    k = scored["probabilities"].shape[1]
    writer.writerow(["id", "patient_id", "eye", "label", "grade", "referable_score"]
                    + [f"p{c}" for c in range(k)])  # fmt: skip
    score = clinical.referable_score(scored["probabilities"])
    for i in range(len(scored["labels"])):
        p = scored["probabilities"][i]
        writer.writerow(
            [scored["ids"][i], scored["patient_ids"][i], scored["eyes"][i],
             int(scored["labels"][i]), int(p.argmax()), f"{score[i]:.6f}"]
            + [f"{v:.6f}" for v in p]
        )  # fmt: skip
    return buf.getvalue()


def _check_once_each(scored: dict, manifest: dict, split: str, data_dir: str) -> None:
    """Every example of the split scored exactly once: counts against the manifest, no
    repeated ids."""
    want = int(manifest["splits"][split]["count"])
    got = len(scored["ids"])
    unique = len(set(scored["ids"].tolist()))
    if got != want or unique != got:
        raise EffdrError(
            f"{data_dir}: split {split!r} gave {got} predictions ({unique} distinct ids) for "
            f"{want} examples in the manifest"
        )


@dataclasses.dataclass
class Fitted:
    """Everything fitted for grading, where it came from, and why some of it is missing."""

    source: str | None = None  # "validation", or the calibration file's path
    fitted_on: dict | None = None  # data_dir, split, images, patients
    thresholds: dict | None = None
    cuts: np.ndarray | None = None
    patient_thresholds: dict | None = None
    patient_cuts: np.ndarray | None = None
    stage: fellow_eye.Stage | None = None
    stage_cuts: np.ndarray | None = None
    why_none: dict = dataclasses.field(default_factory=dict)  # what -> why it is missing
    warnings: list = dataclasses.field(default_factory=list)
    grading: dict | None = None  # the calibration file's content
    # The fellow-eye stage's out-of-fold output on validation, kept for validation's figures.
    out_of_fold_second: np.ndarray | None = dataclasses.field(default=None, repr=False)

    def described(self, what: str, value) -> str:
        if value is None:
            return self.why_none.get(what) or NONE_WITHOUT_VALIDATION
        if self.source == VALIDATION:
            return (
                f"validation ({self.fitted_on['images']} images of {self.fitted_on['patients']} "
                "patients; out-of-fold there)"
            )
        on = self.fitted_on or {}
        return (
            f"--calibration {self.source} (fitted on {on.get('split', '?')} of "
            f"{on.get('data_dir', '?')})"
        )


def _cut_points_or_why(scores, labels, num_classes: int, rows: str):
    """(cut points, None) fitted for kappa, or (None, why not)."""
    if num_classes <= 2:
        return None, "none: a two-class model has no grades to cut"
    if len(np.unique(labels)) < 2:
        return None, f"none: the validation {rows} have only one grade"
    cuts, _ = grade_thresholds.fit(scores, labels, num_classes)
    return cuts, None


def _patient_rows(scored: dict):
    """Patient ids when the split has them for every image and some patient has several
    images (otherwise there is nothing to combine), else None."""
    patients = scored["patient_ids"]
    if not len(patients) or any(p == "" for p in patients):
        return None
    if len(set(patients.tolist())) == len(patients):
        return None
    return patients


def fit_on_validation(scored: dict, num_classes: int, fellow: bool, data_dir: str) -> Fitted:
    """Operating points, cut points (image and patient level) and the fellow-eye stage from
    the validation split's predictions."""
    labels, probs = scored["labels"], scored["probabilities"]
    patients = scored["patient_ids"]
    fitted = Fitted(source=VALIDATION)
    fitted.fitted_on = {
        "data_dir": data_dir,
        "split": VALIDATION,
        "images": int(len(labels)),
        "patients": int(clinical.clusters(patients, len(labels)).max(initial=-1) + 1),
    }
    if num_classes > clinical.REFERABLE_GRADE:
        why = clinical.can_fit_operating_points(labels)
        if why:
            fitted.why_none["operating points"] = f"none: the validation split has {why}"
        else:
            fitted.thresholds = clinical.operating_points(labels, probs)
            for w in clinical.size_warnings(labels, num_classes):
                fitted.warnings.append(f"operating points fitted on validation with {w}")
    else:
        fitted.why_none["operating points"] = "none: referable DR needs grades 0-4"
    fitted.cuts, why = _cut_points_or_why(
        grade_thresholds.expected_grade(probs), labels, num_classes, "images"
    )
    if why:
        fitted.why_none["cut points"] = why
    elif len(labels) < clinical.MIN_FIT_ROWS:
        fitted.warnings.append(
            f"cut points fitted on only {len(labels)} validation images (fewer than "
            f"{clinical.MIN_FIT_ROWS}): they may not carry over to other data"
        )
    rows = _patient_rows(scored)
    if rows is None:
        why = "none: the validation split has no patients with several images"
        fitted.why_none["patient operating points"] = fitted.why_none["patient cut points"] = why
    else:
        ref_labels, ref_probs = clinical.by_patient(labels, probs, rows, by="referable")
        grade_labels, grade_probs = clinical.by_patient(labels, probs, rows)
        if num_classes > clinical.REFERABLE_GRADE:
            why = clinical.can_fit_operating_points(ref_labels)
            if why:
                fitted.why_none["patient operating points"] = f"none: validation patients: {why}"
            else:
                fitted.patient_thresholds = clinical.operating_points(ref_labels, ref_probs)
        fitted.patient_cuts, why = _cut_points_or_why(
            grade_thresholds.expected_grade(grade_probs), grade_labels, num_classes, "patients"
        )
        if why:
            fitted.why_none["patient cut points"] = why
    if fellow:
        eyes = scored["eyes"]
        fitted.stage = fellow_eye.fit(probs, labels, patients, eyes)
        if fitted.stage.model is None:
            fitted.why_none["fellow-eye stage"] = (
                "requested, but no validation split with pairs of eyes to fit it on"
            )
        elif num_classes > 2:
            # On the out-of-fold output: what the stage gives on photographs it was not fitted
            # on, as on every other split.
            second = fellow_eye.out_of_fold(probs, labels, patients, eyes)
            fitted.out_of_fold_second = second
            fitted.stage_cuts, _ = _cut_points_or_why(
                grade_thresholds.expected_grade(second), labels, num_classes, "images"
            )
    return fitted


def _check_calibration(grading: dict, path: str, runs, tta: str, rotations, num_classes: int):
    problems = []
    head_names = [r.head for r in runs]
    if int(grading.get("runs") or 0) != len(runs):
        problems.append(f"fitted on {grading.get('runs')} run(s), evaluating {len(runs)}")
    if list(grading.get("head") or []) != head_names:
        problems.append(
            f"fitted on {'/'.join(grading.get('head') or ['?'])} head(s), the runs have "
            f"{'/'.join(head_names)}"
        )
    if (grading.get("tta") or "none") != tta:
        problems.append(f"fitted with --tta={grading.get('tta')}, evaluating with --tta={tta}")
    fitted_rotations = [float(a) for a in grading.get("tta_rotations") or []]
    if fitted_rotations != [float(a) for a in rotations]:
        problems.append(
            f"fitted with --tta_rotations={','.join(f'{a:g}' for a in fitted_rotations)}, "
            f"evaluating with {','.join(f'{float(a):g}' for a in rotations)}"
        )
    mismatch = scoring.prior_mismatch(grading.get("prior_correction"), runs)
    if mismatch:
        problems.append(mismatch)
    for key in ("cut_points", "patient_cut_points"):
        cuts = grading.get(key)
        if cuts is not None and len(cuts) != num_classes - 1:
            problems.append(f"{len(cuts)} {key} for a model of {num_classes} grades")
    if problems:
        raise EffdrError(f"{path}: does not describe this evaluation: {'; '.join(problems)}")


def find_calibration(path: str) -> str:
    """The grading.json that ``--calibration=PATH`` names. Looked up in this order: PATH
    itself when it is a file; PATH/grading.json (an eval.py output folder); and when PATH is a
    train.py run, the grading.json of its evaluation on its own data
    (PATH/eval_<its data folder>/grading.json)."""
    if tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path):
        return path
    inside = os.path.join(path, GRADING_FILE)
    if tf.io.gfile.exists(inside):
        return inside
    config = os.path.join(path, "config.json")
    if tf.io.gfile.exists(config):
        try:
            with tf.io.gfile.GFile(config) as f:
                data_dir = (json.load(f).get("data") or {}).get("data_dir") or ""
        except (OSError, ValueError, AttributeError) as e:
            raise EffdrError(f"{config}: cannot read ({e})") from e
        folder = "eval_" + os.path.basename(os.path.normpath(data_dir))
        own = os.path.join(path, folder, GRADING_FILE)
        if data_dir and tf.io.gfile.exists(own):
            return own
        raise EffdrError(
            f"{path}: a run without {folder}/{GRADING_FILE} (run eval.py on its validation "
            "split first, or pass that file)"
        )
    raise EffdrError(
        f"{path}: no {GRADING_FILE} there (--calibration takes a grading.json, an eval.py "
        "output folder or a train.py run)"
    )


def load_calibration(path: str, runs, tta: str, rotations, num_classes: int) -> Fitted:
    """Everything fitted, from another evaluation's grading.json (``find_calibration``),
    after checking that it was fitted on the same kind of outputs: runs, heads and views."""
    path = find_calibration(path)
    try:
        with tf.io.gfile.GFile(path) as f:
            grading = json.load(f)
        if not isinstance(grading, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError, tf.errors.OpError) as e:
        raise EffdrError(f"{path}: not a grading.json written by eval.py ({e})") from e
    if grading.get("format") != GRADING_FORMAT:
        raise EffdrError(
            f"{path}: written by an older eval.py (format {grading.get('format')}, not "
            f"{GRADING_FORMAT}); run eval.py on the validation data again"
        )
    _check_calibration(grading, path, runs, tta, rotations, num_classes)

    def cuts(key):
        return None if grading.get(key) is None else np.asarray(grading[key], np.float64)

    fitted = Fitted(source=path, fitted_on=grading.get("fitted_on"), grading=grading)
    fitted.thresholds = grading.get("operating_points")
    fitted.patient_thresholds = grading.get("patient_operating_points")
    fitted.cuts, fitted.patient_cuts = cuts("cut_points"), cuts("patient_cut_points")
    stage = grading.get("fellow_eye")
    if stage:
        fitted.stage = fellow_eye.Stage.from_json(stage)
        if stage.get("cut_points") is not None:
            fitted.stage_cuts = np.asarray(stage["cut_points"], np.float64)
    for what, value in (
        ("operating points", fitted.thresholds),
        ("cut points", fitted.cuts),
        ("patient operating points", fitted.patient_thresholds),
        ("patient cut points", fitted.patient_cuts),
        ("fellow-eye stage", fitted.stage),
    ):
        if value is None:
            fitted.why_none[what] = f"none: {path} has none"
    return fitted


def _rounded(cuts):
    return None if cuts is None else [round(float(c), 6) for c in cuts]


def _grading(fitted: Fitted, model_dir, runs, tta, rotations, results) -> dict:
    validation = results.get(VALIDATION) or {}
    stage = None
    if fitted.stage is not None and fitted.stage.model is not None:
        stage = fitted.stage.to_json()
        stage["cut_points"] = _rounded(fitted.stage_cuts)
    return {
        "format": GRADING_FORMAT,
        "model_dir": model_dir,
        "runs": len(runs),
        "head": [r.head for r in runs],
        "tta": tta,
        "tta_rotations": [float(a) for a in rotations],
        # The fitted points are on the corrected probabilities: a file is used only with the
        # same correction (``_check_calibration``).
        "prior_correction": scoring.prior_corrections(runs),
        "fitted_on": fitted.fitted_on,
        "cut_points": _rounded(fitted.cuts),
        "operating_points": fitted.thresholds,
        "patient_operating_points": fitted.patient_thresholds,
        "patient_cut_points": _rounded(fitted.patient_cuts),
        "fellow_eye": stage,
        "validation_kappa_argmax": validation.get("kappa"),
        # Out-of-fold: each patient fold graded at cut points fitted on the other folds.
        "validation_kappa_fitted": (validation.get("fitted_grades") or {}).get("kappa"),
    }


def _headline(labels, probs, fitted_grades, num_classes: int, patient_ids, rounds) -> dict:
    """Accuracy, kappa (argmax and at cut points: ``fitted_grades``, already decided) and
    referable AUC, with cluster-bootstrap intervals of kappa and AUC."""
    result = clinical.summarize(labels, probs, patient_ids=patient_ids, bootstrap_rounds=rounds)
    boot = result.get("bootstrap_95") or {}
    out = {
        "count": result["count"],
        "accuracy": result["accuracy"],
        "kappa": result["kappa"],
        "kappa_95": boot.get("kappa"),
        "referable_auc": (result.get("referable") or {}).get("auc"),
        "referable_auc_95": boot.get("referable_auc"),
        "warnings": result["warnings"],
    }
    if fitted_grades is not None:
        figures = clinical.fitted_grade_figures(
            labels, fitted_grades, num_classes, patient_ids=patient_ids, rounds=rounds
        )
        out["kappa_fitted_cut_points"] = figures["kappa"]
        out["kappa_fitted_cut_points_95"] = figures["kappa_95"]
    return out


def _fellow_eye_figures(scored, second, grades, num_classes: int, rounds) -> dict:
    """Per-image and per-patient figures of the second stage, beside the single-image ones.
    ``grades``: the second stage's grades at its cut points (None: none fitted)."""
    labels, patients = scored["labels"], scored["patient_ids"]
    out = {"image": _headline(labels, second, grades, num_classes, patients, rounds)}
    _, has = fellow_eye.fellow_probabilities(second, patients, scored["eyes"])
    out["images_with_fellow_eye"] = int(has.sum())
    if len(patients) and all(p != "" for p in patients):
        worst, rows = clinical.by_patient(labels, second, patients)
        single_worst, single_rows = clinical.by_patient(labels, scored["probabilities"], patients)
        # Kappa on the eye with the higher expected grade, the AUC on the eye with the higher
        # referable score (each the score its figure reads).
        out["patient"] = _headline(worst, rows, None, num_classes, None, rounds)
        out["patient_single_image"] = _headline(
            single_worst, single_rows, None, num_classes, None, rounds
        )
        for name, probs in (("patient", second), ("patient_single_image", scored["probabilities"])):
            ref_labels, ref_rows = clinical.by_patient(labels, probs, patients, by="referable")
            ref = clinical.summarize(ref_labels, ref_rows, bootstrap_rounds=rounds)
            out[name]["referable_auc"] = (ref.get("referable") or {}).get("auc")
            out[name]["referable_auc_95"] = (ref.get("bootstrap_95") or {}).get("referable_auc")
    return out


def _patient_level(scored: dict, fitted: Fitted, in_sample: bool, num_classes, rounds):
    """Figures per patient: kappa and grades on the eye with the higher expected grade, the
    referable AUC and operating points on the eye with the higher referable score, at the
    patient-level points (out-of-fold on the split they were fitted on)."""
    patients = _patient_rows(scored)
    if patients is None:
        return None
    labels, probs = scored["labels"], scored["probabilities"]
    grade_labels, grade_probs = clinical.by_patient(labels, probs, patients)
    ref_labels, ref_probs = clinical.by_patient(labels, probs, patients, by="referable")
    fold = clinical.folds(None, len(grade_labels))
    grades = clinical.summarize(grade_labels, grade_probs, bootstrap_rounds=rounds, unit="patients")
    out_of_fold = None
    if in_sample and fitted.patient_thresholds:
        out_of_fold = clinical.out_of_fold_thresholds(ref_labels, ref_probs, fold)
    thresholds = fitted.patient_thresholds if (not in_sample or out_of_fold) else None
    referable = clinical.summarize(
        ref_labels, ref_probs, thresholds, out_of_fold=out_of_fold, bootstrap_rounds=rounds,
        unit="patients",
    )  # fmt: skip
    result = {k: grades[k] for k in ("count", "accuracy", "kappa", "confusion", "warnings")}
    result["eye"] = (
        "kappa and grades: the eye with the higher expected grade; referable figures: the eye "
        "with the higher referable score"
    )
    boot = grades.get("bootstrap_95")
    if boot is not None:
        boot = dict(boot, referable_auc=(referable.get("bootstrap_95") or {}).get("referable_auc"))
    result["bootstrap_95"] = boot
    if "referable" in referable:
        result["referable"] = referable["referable"]
    if fitted.patient_cuts is not None:
        figures = _graded_at_cuts(
            grade_probs, grade_labels, fitted.patient_cuts, fold, in_sample, num_classes, rounds
        )
        if figures is not None:
            result["fitted_grades"] = figures
    return result


def _graded_at_cuts(probs, labels, cuts, fold, in_sample, num_classes, rounds, patient_ids=None):
    """Figures of the expected grade read at ``cuts``; on the split they were fitted on, read
    out-of-fold (each fold at cut points fitted on the others). None when no fold can be fitted."""
    scores = grade_thresholds.expected_grade(probs)
    grades = (
        clinical.out_of_fold_grades(scores, labels, fold, num_classes)
        if in_sample
        else grade_thresholds.apply(scores, cuts)
    )
    if grades is None:
        return None
    figures = clinical.fitted_grade_figures(
        labels, grades, num_classes, patient_ids=patient_ids, rounds=rounds
    )
    figures["out_of_fold"] = in_sample
    return figures


def _split_result(scored: dict, fitted: Fitted, split: str, num_classes: int, rounds) -> dict:
    """Every figure of one split at the fitted points; on the split they were fitted on, the
    figures at them are out-of-fold."""
    labels, probs = scored["labels"], scored["probabilities"]
    patients = scored["patient_ids"]
    in_sample = split == VALIDATION and fitted.source == VALIDATION
    fold = clinical.folds(patients, len(labels))
    out_of_fold, thresholds = None, fitted.thresholds
    if in_sample and thresholds:
        out_of_fold = clinical.out_of_fold_thresholds(labels, probs, fold)
        if out_of_fold is None:
            thresholds = None
    result = clinical.summarize(
        labels, probs, thresholds, patient_ids=patients, out_of_fold=out_of_fold,
        bootstrap_rounds=rounds,
    )  # fmt: skip
    if fitted.cuts is not None:
        figures = _graded_at_cuts(
            probs, labels, fitted.cuts, fold, in_sample, num_classes, rounds, patients
        )
        if figures is not None:
            result["fitted_grades"] = figures
    if fitted.stage is not None and fitted.stage.model is not None:
        eyes = scored["eyes"]
        if in_sample:
            second = fitted.out_of_fold_second
            if second is None:
                second = fellow_eye.out_of_fold(probs, labels, patients, eyes)
            grades = (
                fellow_eye.out_of_fold_grades(second, labels, patients, num_classes)
                if fitted.stage_cuts is not None
                else None
            )
        else:
            second = fitted.stage.apply(probs, patients, eyes)
            grades = (
                None
                if fitted.stage_cuts is None
                else grade_thresholds.apply(grade_thresholds.expected_grade(second),
                                            fitted.stage_cuts)
            )  # fmt: skip
        result["fellow_eye"] = _fellow_eye_figures(scored, second, grades, num_classes, rounds)
        result["fellow_eye"]["out_of_fold"] = in_sample
    patient = _patient_level(scored, fitted, in_sample, num_classes, rounds)
    if patient:
        result["patient_level"] = patient
    return result


def evaluate(
    model_dir: str,
    *,
    data_dir: str | None = None,
    splits=("validation",),
    tta: str = "none",
    rotations=(),
    out_dir: str | None = None,
    bootstrap_rounds: int = 1000,
    fellow: bool = False,
    calibration: str | None = None,
    sections=(),
    prior_correction: bool = True,
) -> dict:
    """Scores ``splits`` and writes metrics.json, predictions_<split>.csv, figures and
    report.html into ``out_dir`` (default ``model_dir/eval_<data folder name>``).

    ``model_dir`` may name several runs (``A,B`` or a list): an ensemble whose class
    probabilities are averaged; everything fitted on validation is fitted on the ensemble's
    output. ``fellow``: also score the fellow-eye second stage (``fellow_eye``).
    ``calibration``: take the operating points, cut points and fellow-eye stage from this
    grading.json (or folder holding one, ``find_calibration``) instead of fitting them on
    validation, e.g. for an external test set. ``sections``: extra (title, HTML) sections of
    report.html (``report.render``). ``prior_correction``: score a run trained on rebalanced
    classes under its training data's natural class shares (``priors``); False scores the
    probabilities as the model learnt them.
    """
    if UNLABELLED in splits:
        raise EffdrError(
            f"--split={UNLABELLED}: those photographs have no grades to measure against"
        )
    runs = scoring.load_runs(model_dir, prior_correction=prior_correction)
    run = runs[0]
    model_dir = ",".join(r.model_dir for r in runs)
    data_dir = data_dir or run.config.data.data_dir
    if not data_dir:
        raise EffdrError("no --data_dir given and the run's config names none")
    manifest = pipeline.load_manifest(data_dir)
    splits = [s for s in splits if s]
    missing = [s for s in splits if s not in manifest["splits"]]
    if missing:
        raise EffdrError(
            f"{data_dir}: no split {', '.join(map(repr, missing))}; it has "
            f"{', '.join(sorted(manifest['splits']))}"
        )
    if int(manifest["num_classes"]) != run.num_classes:
        raise EffdrError(
            f"{data_dir}: {manifest['num_classes']} classes, but the model has {run.num_classes}"
        )
    k = run.num_classes
    fitted = load_calibration(calibration, runs, tta, rotations, k) if calibration else Fitted()
    if not fellow:  # a calibration file's stage is applied only when asked for
        fitted.stage = fitted.stage_cuts = None
        fitted.why_none.pop("fellow-eye stage", None)
    out_dir = out_dir or os.path.join(
        run.model_dir,
        "eval_"
        + os.path.basename(os.path.normpath(data_dir))
        + (f"_ensemble{len(runs)}" if len(runs) > 1 else ""),
    )
    tf.io.gfile.makedirs(out_dir)
    names = list(constants.DR_GRADES) if k == 5 else [str(c) for c in range(k)]

    has_validation = int((manifest["splits"].get(VALIDATION) or {}).get("count") or 0) > 0
    fit_here = not calibration and has_validation
    order = ([VALIDATION] if fit_here or VALIDATION in splits else []) + [
        s for s in splits if s != VALIDATION
    ]
    if not calibration and VALIDATION in manifest["splits"] and not has_validation:
        fitted.warnings.append(f"{data_dir}: the validation split is empty; nothing is fitted")
    results, figures, timing = {}, {}, {}
    for split in order:
        started = time.perf_counter()
        scored = scoring.score_split_ensemble(runs, data_dir, split, tta=tta, rotations=rotations)
        timing[split] = time.perf_counter() - started
        _check_once_each(scored, manifest, split, data_dir)
        labels, probs = scored["labels"], scored["probabilities"]
        if split == VALIDATION and fit_here:
            fitted = fit_on_validation(scored, k, fellow, data_dir)
            if split not in splits:
                continue
        result = _split_result(scored, fitted, split, k, bootstrap_rounds)
        result["images_per_second"] = len(labels) / max(timing[split], 1e-9)
        results[split] = result
        fileio.write_atomic(
            os.path.join(out_dir, f"predictions_{split}.csv"), _predictions_csv(scored)
        )
        figures[split] = {}
        for label, png in (
            ("confusion matrix", plots.confusion_png(metrics.confusion_matrix(
                labels, probs.argmax(1), k), names, split)),
            ("ROC curves", plots.roc_png(labels, probs)),
            ("precision-recall curves", plots.pr_png(labels, probs)),
            ("reliability diagram", plots.reliability_png(result["calibration"])),
        ):  # fmt: skip
            name = f"{split}_{label.split()[0].lower()}.png"
            fileio.write_atomic(os.path.join(out_dir, name), png)
            figures[split][label] = name

    grading = _grading(fitted, model_dir, runs, tta, rotations, results)
    origin = {
        what: fitted.described(what, value)
        for what, value in (
            ("operating points", fitted.thresholds),
            ("cut points", fitted.cuts),
            ("patient operating points", fitted.patient_thresholds),
            ("patient cut points", fitted.patient_cuts),
        )
    }
    if fellow or fitted.stage is not None:
        model = None if fitted.stage is None else fitted.stage.model
        origin["fellow-eye stage"] = fitted.described("fellow-eye stage", model)
    warnings = list(fitted.warnings)
    for split, result in results.items():
        warnings += [f"{split}: {w}" for w in result["warnings"]]
        warnings += [f"{split}, patients: {w}" for w in
                     (result.get("patient_level") or {}).get("warnings", [])]  # fmt: skip
    summary = {
        "model_dir": model_dir,
        "runs": len(runs),
        "heads": grading["head"],
        "variant": run.config.get("variant"),
        "data_dir": data_dir,
        "dataset": (manifest.get("source") or {}).get("name"),
        "image_size": run.image_size,
        "normalization": run.config.model.get("normalization"),
        "tta": tta,
        "tta_rotations": [float(a) for a in rotations],
        "calibration": fitted.source if calibration else None,
        "prior_correction": grading["prior_correction"],
        "thresholds": fitted.thresholds,
        "thresholds_from": (VALIDATION if fitted.source == VALIDATION else fitted.source)
        if fitted.thresholds
        else None,
        "patient_thresholds": fitted.patient_thresholds,
        # Grades read off the expected grade at cut points fitted for kappa on validation
        # (each split's "fitted_grades"); "accuracy" and "kappa" stay argmax's.
        "grade_cut_points": grading["cut_points"],
        "patient_cut_points": grading["patient_cut_points"],
        "fitted_from": origin,
        "fitted_on": fitted.fitted_on,
        "fellow_eye": None
        if fitted.stage is None
        else {
            "fitted_on_images": fitted.stage.fitted_on,
            "cut_points": _rounded(fitted.stage_cuts),
        },
        "intervals": (
            f"{int(100 * clinical.LEVEL)} % percentile intervals, cluster bootstrap over "
            f"patients, {bootstrap_rounds} rounds"
            if bootstrap_rounds
            else "none (--bootstrap=0)"
        ),
        "calibration_note": " ".join(
            sorted({n for n in (heads.calibration_note(r.head) for r in runs) if n})
        )
        or None,
        "warnings": warnings,
        "splits": results,
    }
    fileio.write_atomic(os.path.join(out_dir, "metrics.json"), json.dumps(summary, indent=2))
    if fitted.source == VALIDATION and (
        fitted.thresholds or fitted.cuts is not None or fitted.patient_thresholds
    ):
        fileio.write_atomic(os.path.join(out_dir, GRADING_FILE), json.dumps(grading, indent=2))
    provenance = {
        "model": (
            f"{model_dir} (efficientnet-{summary['variant']}, {run.image_size} px, "
            f"{'/'.join(sorted(set(grading['head'])))} head)"
            if len(runs) == 1
            else f"ensemble of {len(runs)} runs ({model_dir}), probabilities averaged"
        ),
        "data": f"{data_dir} ({summary['dataset']})",
        "test-time augmentation": tta
        + (
            f", plus rotations by {', '.join(f'{a:g}' for a in rotations)} degrees"
            if rotations
            else ""
        ),
        "intervals": summary["intervals"] + "; an image without a patient id is its own cluster",
        "prior correction": "; ".join(
            f"{r.model_dir}: {priors.describe(r.prior_correction)}"
            if len(runs) > 1
            else priors.describe(r.prior_correction)
            for r in runs
        )
        if prior_correction
        else "off (--noprior_correction): the probabilities as the model learnt them",
    }
    if summary["calibration_note"]:
        provenance["calibration figures"] = summary["calibration_note"]
    for what, where in origin.items():
        provenance[f"{what} from"] = where
    if fitted.cuts is not None:
        provenance["grade decoding"] = "argmax; also the expected grade cut at " + ", ".join(
            f"{c:.3f}" for c in fitted.cuts
        )
    if fitted.stage is not None and fitted.stage.model is not None:
        provenance["fellow-eye stage"] = (
            f"logistic regression on both eyes' probabilities, fitted on {fitted.stage.fitted_on} "
            "validation images"
        )
    if (manifest.get("source") or {}).get("synthetic"):
        provenance["note"] = (
            "semi-synthetic photographs with drawn lesions: these results say nothing about "
            "clinical performance"
        )
    # Each split's own warnings head its section; the top of the page has the fitting's.
    page = report.render(results, figures, provenance, names, sections=sections,
                         warnings=fitted.warnings)  # fmt: skip
    fileio.write_atomic(os.path.join(out_dir, "report.html"), page)
    summary["out_dir"] = out_dir
    return summary
