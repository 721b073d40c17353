"""Carving a validation split out of train: by patient, stratified by grade, with a fixed seed."""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

from effdr_tf.data.schema import Record


def carve_validation(records: list[Record], fraction: float, seed: int) -> list[Record]:
    """Moves ``fraction`` of the training patients (both eyes together) to ``validation``.

    Patients are stratified by their worst eye's grade, so every grade keeps its share; within a
    grade they are drawn with ``seed``. Records outside ``train`` are returned unchanged.
    """
    if fraction <= 0:
        return list(records)
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
        rng = np.random.default_rng([seed, 101, grade + 1])
        take = int(round(fraction * len(names)))
        chosen.update(names[i] for i in rng.permutation(len(names))[:take])
    return [
        dataclasses.replace(r, split="validation")
        if r.split == "train" and r.group in chosen
        else r
        for r in records
    ]
