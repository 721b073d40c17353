"""Moving training patients to another split: by patient, stratified by grade, with a fixed seed.

``carve_validation`` makes a validation split where the source has none; ``withhold_labels``
turns most of the training patients into unlabelled photographs, for studies of how a method
does with few grades (self-training from a labelled tenth, say). ``carving_warnings`` and
``validation_warning`` say when validation comes out without a grade, or empty.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

from effdr_tf.data.schema import UNKNOWN_LABEL, UNLABELLED, Record


def _strata(records: list[Record]) -> dict[int, list[str]]:
    """The training patients (groups) by their worst eye's grade, each list sorted."""
    groups = collections.defaultdict(list)
    for r in records:
        if r.split == "train":
            groups[r.group].append(r)
    strata = collections.defaultdict(list)
    for group, members in groups.items():
        strata[max(m.label for m in members)].append(group)
    return {grade: sorted(names) for grade, names in strata.items()}


def _stratified_patients(
    records: list[Record], fraction: float, seed: int, salt: int, *, one_each: bool = False
) -> set:
    """``fraction`` of the training patients (groups), stratified by their worst eye's grade;
    within a grade drawn with ``seed`` (``salt`` keeps different uses' draws apart).

    With ``one_each``, every grade with two or more patients gives at least one and keeps at
    least one: rounding ``fraction`` x patients alone gives none for a grade with fewer than
    ``0.5 / fraction`` patients (under 5 at 0.1), which leaves small data without validation.
    """
    chosen = set()
    for grade, names in sorted(_strata(records).items()):
        rng = np.random.default_rng([seed, salt, grade + 1])
        take = int(round(fraction * len(names)))
        if one_each and len(names) >= 2:
            take = min(len(names) - 1, max(1, take))
        chosen.update(names[i] for i in rng.permutation(len(names))[:take])
    return chosen


def carve_validation(records: list[Record], fraction: float, seed: int) -> list[Record]:
    """Moves ``fraction`` of the training patients (both eyes together) to ``validation``.

    Patients are stratified by their worst eye's grade, so every grade keeps its share; within a
    grade they are drawn with ``seed``. Every grade with at least two patients gives at least
    one to validation and keeps at least one for training; a grade with a single patient keeps
    it for training (``carving_warnings`` says so). Records outside ``train`` are returned
    unchanged. A "patient" is ``Record.group``: the patient id, a cluster of near-duplicate
    photographs, or else the image.
    """
    if fraction <= 0:
        return list(records)
    chosen = _stratified_patients(records, fraction, seed, salt=101, one_each=True)
    return [
        dataclasses.replace(r, split="validation")
        if r.split == "train" and r.group in chosen
        else r
        for r in records
    ]


def withhold_labels(records: list[Record], fraction: float, seed: int) -> list[Record]:
    """Moves ``fraction`` of the training patients (both eyes together) to the unlabelled split,
    their grades replaced by the unknown label.

    Stratified like ``carve_validation`` (by the worst eye's grade, drawn with ``seed``), so the
    patients left with grades keep every grade's share. Other splits are returned unchanged.
    """
    if fraction <= 0:
        return list(records)
    chosen = _stratified_patients(records, fraction, seed, salt=103)
    return [
        dataclasses.replace(r, split=UNLABELLED, label=UNKNOWN_LABEL)
        if r.split == "train" and r.group in chosen
        else r
        for r in records
    ]


def carving_warnings(records: list[Record], fraction: float) -> list[str]:
    """Why ``carve_validation(records, fraction, ...)`` leaves a grade out of validation: the
    grades with a single training patient, which stays in training. One line each."""
    if fraction <= 0:
        return []
    return [
        f"grade {grade}: only 1 training patient, kept for training, so validation has no "
        f"patient of grade {grade}"
        for grade, names in sorted(_strata(records).items())
        if len(names) == 1
    ]


NO_VALIDATION = "no validation split"
NO_VALIDATION_CONSEQUENCE = (
    "training cannot pick its best epoch, so best.weights.h5 will be the last epoch's weights, "
    "and evaluation has no validation split to fit operating points or cut points on"
)


def empty_validation_reason(records: list[Record], fraction: float) -> str | None:
    """Why ``records`` (after carving) hold no labelled validation photograph, or None when they
    hold some."""
    if any(r.split == "validation" and r.label != UNKNOWN_LABEL for r in records):
        return None
    if fraction <= 0:
        return "--val_fraction=0 and the source has none"
    patients = sum(len(names) for names in _strata(records).values())
    return (
        f"no grade has 2 or more training patients to carve one from ({patients} training "
        "patient(s) in all)"
    )


def validation_warning(manifest: dict, data_dir: str, split: str = "validation") -> str | None:
    """The warning line for a run about to train on ``data_dir`` whose manifest has no
    ``split`` images, or None when it has some.

    The builder records why in ``manifest["warnings"]``; this repeats it when training starts,
    where an empty validation split changes what the run saves.
    """
    count = manifest.get("splits", {}).get(split, {}).get("count", 0)
    if count:
        return None
    recorded = [w for w in manifest.get("warnings", []) if w.startswith(NO_VALIDATION)]
    if split == "validation" and recorded:
        return f"{data_dir}: {recorded[0]}"
    return f"{data_dir}: no {split!r} images in manifest.json: {NO_VALIDATION_CONSEQUENCE}"


def empty_validation_warning(reason: str) -> str:
    """The line the builder records (and training repeats) for a build without validation."""
    return f"{NO_VALIDATION} ({reason}): {NO_VALIDATION_CONSEQUENCE}"
