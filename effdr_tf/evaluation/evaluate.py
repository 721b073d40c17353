"""eval.py's work: score splits with a trained run, write metrics.json, figures and report.html.

Everything fitted is fitted on the validation split only and applied unchanged to every other
split: the referable operating points, the grade cut points on the expected grade (written to
``grading.json`` for ``eval.py --images``) and the fellow-eye second stage. Without a validation
split the other splits get none of them.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time

import tensorflow as tf

from effdr_tf import constants, fileio
from effdr_tf.data.schema import UNLABELLED
from effdr_tf.errors import EffdrError
from effdr_tf.evaluation import clinical, fellow_eye, metrics, plots, report, scoring
from effdr_tf.evaluation import thresholds as grade_thresholds
from effdr_tf.pipeline import input as pipeline

VALIDATION = "validation"
GRADING_FILE = "grading.json"


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


def _patient_level(scored: dict, thresholds, bootstrap_rounds) -> dict | None:
    patients = scored["patient_ids"]
    if not len(patients) or any(p == "" for p in patients):
        return None
    if len(set(patients.tolist())) == len(patients):  # one image per patient: nothing to combine
        return None
    labels, probs = clinical.by_patient(scored["labels"], scored["probabilities"], patients)
    result = clinical.summarize(labels, probs, thresholds, bootstrap_rounds=bootstrap_rounds)
    return {k: result[k] for k in ("count", "accuracy", "kappa", "confusion", "referable")
            if k in result}  # fmt: skip


def _fitted_grades(labels, probs, cuts, num_classes: int) -> dict:
    """Accuracy and kappa of grades read off the expected grade at ``cuts``, beside argmax's."""
    grades = grade_thresholds.apply(grade_thresholds.expected_grade(probs), cuts)
    confusion = metrics.confusion_matrix(labels, grades, num_classes)
    return {
        "accuracy": metrics.accuracy(confusion),
        "kappa": metrics.quadratic_weighted_kappa(confusion),
        "confusion": confusion.tolist(),
    }


def _headline(labels, probs, cuts, num_classes: int) -> dict:
    """Accuracy, kappa (argmax and at ``cuts``) and referable AUC, without intervals."""
    result = clinical.summarize(labels, probs, bootstrap_rounds=0)
    out = {
        "accuracy": result["accuracy"],
        "kappa": result["kappa"],
        "referable_auc": (result.get("referable") or {}).get("auc"),
    }
    if cuts is not None:
        out["kappa_fitted_cut_points"] = _fitted_grades(labels, probs, cuts, num_classes)["kappa"]
    return out


def _fellow_eye_figures(scored, second, cuts, num_classes: int) -> dict:
    """Per-image and per-patient figures of the second stage, beside the single-image ones."""
    labels = scored["labels"]
    out = {"image": _headline(labels, second, cuts, num_classes)}
    _, has = fellow_eye.fellow_probabilities(second, scored["patient_ids"], scored["eyes"])
    out["images_with_fellow_eye"] = int(has.sum())
    patients = scored["patient_ids"]
    if len(patients) and all(p != "" for p in patients):
        worst, rows = clinical.by_patient(labels, second, patients)
        single_worst, single_rows = clinical.by_patient(labels, scored["probabilities"], patients)
        out["patient"] = _headline(worst, rows, cuts, num_classes)
        out["patient_single_image"] = _headline(single_worst, single_rows, None, num_classes)
    return out


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
) -> dict:
    """Scores ``splits`` and writes metrics.json, predictions_<split>.csv, figures and
    report.html into ``out_dir`` (default ``model_dir/eval_<data folder name>``).

    ``model_dir`` may name several runs (``A,B`` or a list): an ensemble whose class
    probabilities are averaged; everything fitted on validation is fitted on the ensemble's
    output. ``fellow``: also score the fellow-eye second stage (``fellow_eye``).
    """
    if UNLABELLED in splits:
        raise EffdrError(
            f"--split={UNLABELLED}: those photographs have no grades to measure against"
        )
    runs = scoring.load_runs(model_dir)
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
    out_dir = out_dir or os.path.join(
        run.model_dir,
        "eval_"
        + os.path.basename(os.path.normpath(data_dir))
        + (f"_ensemble{len(runs)}" if len(runs) > 1 else ""),
    )
    tf.io.gfile.makedirs(out_dir)
    names = list(constants.DR_GRADES) if run.num_classes == 5 else [
        str(c) for c in range(run.num_classes)]  # fmt: skip

    order = ([VALIDATION] if VALIDATION in manifest["splits"] else []) + [
        s for s in splits if s != VALIDATION
    ]
    thresholds = None
    cuts = None  # grade cut points on the expected grade, fitted on validation
    stage, stage_cuts = None, None  # the fellow-eye second stage and its cut points
    results, figures, timing = {}, {}, {}
    for split in order:
        started = time.perf_counter()
        scored = scoring.score_split_ensemble(runs, data_dir, split, tta=tta, rotations=rotations)
        timing[split] = time.perf_counter() - started
        _check_once_each(scored, manifest, split, data_dir)
        labels, probs = scored["labels"], scored["probabilities"]
        second = None
        if split == VALIDATION:
            referable = labels >= clinical.REFERABLE_GRADE
            if run.num_classes > clinical.REFERABLE_GRADE and 0 < referable.sum() < len(labels):
                thresholds = clinical.operating_points(labels, probs)
            if run.num_classes > 2:
                cuts, _ = grade_thresholds.fit(
                    grade_thresholds.expected_grade(probs), labels, run.num_classes
                )
            if fellow:
                patients, eyes = scored["patient_ids"], scored["eyes"]
                stage = fellow_eye.fit(probs, labels, patients, eyes)
                second = fellow_eye.out_of_fold(probs, labels, patients, eyes)
                if run.num_classes > 2:
                    stage_cuts, _ = grade_thresholds.fit(
                        grade_thresholds.expected_grade(second), labels, run.num_classes
                    )
            if split not in splits:
                continue
        elif stage is not None:
            second = stage.apply(probs, scored["patient_ids"], scored["eyes"])
        result = clinical.summarize(labels, probs, thresholds, bootstrap_rounds=bootstrap_rounds)
        if cuts is not None:
            result["fitted_grades"] = _fitted_grades(labels, probs, cuts, run.num_classes)
        if second is not None:
            result["fellow_eye"] = _fellow_eye_figures(scored, second, stage_cuts, run.num_classes)
        patient = _patient_level(scored, thresholds, bootstrap_rounds)
        if patient:
            result["patient_level"] = patient
        result["images_per_second"] = len(labels) / max(timing[split], 1e-9)
        results[split] = result
        fileio.write_atomic(
            os.path.join(out_dir, f"predictions_{split}.csv"), _predictions_csv(scored)
        )
        figures[split] = {}
        for label, png in (
            ("confusion matrix", plots.confusion_png(metrics.confusion_matrix(
                labels, probs.argmax(1), run.num_classes), names, split)),
            ("ROC curves", plots.roc_png(labels, probs)),
            ("precision-recall curves", plots.pr_png(labels, probs)),
            ("reliability diagram", plots.reliability_png(result["calibration"])),
        ):  # fmt: skip
            name = f"{split}_{label.split()[0].lower()}.png"
            fileio.write_atomic(os.path.join(out_dir, name), png)
            figures[split][label] = name

    grading = {
        "cut_points": None if cuts is None else [round(float(c), 6) for c in cuts],
        "fitted_on": {"data_dir": data_dir, "split": VALIDATION} if cuts is not None else None,
        "head": [r.head for r in runs],
        "tta": tta,
        "validation_kappa_argmax": (results.get(VALIDATION) or {}).get("kappa"),
        "validation_kappa_fitted": ((results.get(VALIDATION) or {}).get("fitted_grades") or {}).get(
            "kappa"
        ),
    }
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
        "thresholds": thresholds,
        "thresholds_from": VALIDATION if thresholds else None,
        # Grades read off the expected grade at cut points fitted for kappa on validation
        # (each split's "fitted_grades"); "accuracy" and "kappa" stay argmax's.
        "grade_cut_points": grading["cut_points"],
        "fellow_eye": None
        if stage is None
        else {
            "fitted_on_images": stage.fitted_on,
            "cut_points": None if stage_cuts is None else [float(c) for c in stage_cuts],
        },
        "splits": results,
    }
    fileio.write_atomic(os.path.join(out_dir, "metrics.json"), json.dumps(summary, indent=2))
    if cuts is not None:
        fileio.write_atomic(os.path.join(out_dir, GRADING_FILE), json.dumps(grading, indent=2))
    gain = ""
    if grading["validation_kappa_fitted"] is not None and grading["validation_kappa_argmax"]:
        gain = (
            f"; on validation kappa {grading['validation_kappa_argmax']:.3f} by argmax, "
            f"{grading['validation_kappa_fitted']:.3f} at the cut points (fitted there)"
        )
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
        "operating points from": summary["thresholds_from"] or "none (no validation split)",
        "grade decoding": "argmax; also the expected grade cut at "
        + (
            ", ".join(f"{c:.3f}" for c in cuts) + " (fitted for kappa on validation)" + gain
            if cuts is not None
            else "nothing (no validation split)"
        ),
    }
    if fellow:
        provenance["fellow-eye stage"] = (
            f"logistic regression on both eyes' probabilities, fitted on {stage.fitted_on} "
            "validation images (validation figures out-of-fold)"
            if stage is not None and stage.model is not None
            else "requested, but no validation split with pairs of eyes to fit it on"
        )
    if (manifest.get("source") or {}).get("synthetic"):
        provenance["note"] = (
            "semi-synthetic photographs with drawn lesions: these results say nothing about "
            "clinical performance"
        )
    page = report.render(results, figures, provenance, names)
    fileio.write_atomic(os.path.join(out_dir, "report.html"), page)
    summary["out_dir"] = out_dir
    return summary
