"""Moving training patients to another split: by patient, stratified by grade, with a fixed seed.

``carve_validation`` makes a validation split where the source has none; ``withhold_labels``
turns most of the training patients into unlabelled photographs, for studies of how a method
does with few grades (self-training from a labelled tenth, say).
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

from effdr_tf.data.schema import UNKNOWN_LABEL, UNLABELLED, Record


def _stratified_patients(records: list[Record], fraction: float, seed: int, salt: int) -> set:
    """``fraction`` of the training patients (groups), stratified by their worst eye's grade;
    within a grade drawn with ``seed`` (``salt`` keeps different uses' draws apart)."""
    groups = collections.defaultdict(list)
    for r in records:
        if r.split == "train":
            groups[r.group].append(r)
    strata = collections.defaultdict(list)
    for group, members in groups.items():
        strata[max(m.label for m in members)].append(group)
    chosen = set()
    for grade in sorted(strata):
        names = sorted(strata[grade])
        rng = np.random.default_rng([seed, salt, grade + 1])
        take = int(round(fraction * len(names)))
        chosen.update(names[i] for i in rng.permutation(len(names))[:take])
    return chosen


def carve_validation(records: list[Record], fraction: float, seed: int) -> list[Record]:
    """Moves ``fraction`` of the training patients (both eyes together) to ``validation``.

    Patients are stratified by their worst eye's grade, so every grade keeps its share; within a
    grade they are drawn with ``seed``. Records outside ``train`` are returned unchanged.
    """
    if fraction <= 0:
        return list(records)
    chosen = _stratified_patients(records, fraction, seed, salt=101)
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
