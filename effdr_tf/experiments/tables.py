"""The thesis's result tables 4.1-4.5 as data: one row per published figure.

Each row names a recipe (a config file and argument), the dataset and weights it needs (keys
the user maps to folders and files: ``--data=cifar10=DIR --weights=b5-ns=FILE``), the splits to
score and the thesis's figures for them. Figures: "EfficientNet with RandAugment for Diabetic
Retinopathy Detection" (Imperial College, 2020), tables 4.1-4.5.
"""

from __future__ import annotations

import dataclasses

IMAGENET = "imagenet"


@dataclasses.dataclass(frozen=True)
class Row:
    """One experiment: a training run (or an evaluation of another row's run) and its figures.

    Attributes:
        name: unique, ``table/variant-setting`` (``4.1/b0-scratch``); also its folder name.
        table: the table it belongs to, with its title.
        config: ``configs/FILE.py:ARG`` as train.py's ``--config`` takes it.
        data: key of the builder output it trains and scores on (``--data=KEY=DIR``).
        weights: key of the starting checkpoint (``--weights=KEY=FILE``), "" from scratch;
            ``imagenet-<variant>`` falls back to the keras.applications ImageNet file in the
            Keras cache (``weights="imagenet"``) when not mapped.
        overrides: ``(config key, value)`` pairs on top of the recipe.
        splits: the splits scored (``eval.py --split``).
        thesis: ``(split, accuracy %)`` as the thesis reports it.
        evaluate_run_of: for rows that only evaluate (table 4.5): the row whose run is scored.
        cost: what the run takes, as far as known.
    """

    name: str
    table: str
    config: str
    data: str
    weights: str = ""
    overrides: tuple[tuple[str, str], ...] = ()
    splits: tuple[str, ...] = ("test",)
    thesis: tuple[tuple[str, float], ...] = ()
    evaluate_run_of: str = ""
    cost: str = ""


# What each run processes; GPU hours were not measured here (no GPU on the machines this
# project is built on) and the thesis does not report them.
_CIFAR_COST = "40 epochs x 50,000 images at the shards' size (32 px native): 2.0M images"
_KAGGLE_COST = "40 epochs x 35,126 images at 456 px (B5, batch 8): 1.4M images"

# (variant, scratch %, transfer %) per dataset: thesis tables 4.1 (CIFAR-10) and 4.2 (CIFAR-100).
_CIFAR = {
    ("4.1", "cifar10"): [("b0", 85.93, 96.73), ("b3", 88.63, 97.69), ("b5", 86.62, 97.54)],
    ("4.2", "cifar100"): [("b0", 57.04, 84.46), ("b3", 61.46, 86.51), ("b5", 52.94, 85.95)],
}
# (weights key, public %, private %): tables 4.3 (natural shares, no RandAugment) and 4.4
# (BalancedSampler and RandAugment); 4.5 scores the 4.3 runs on APTOS 2019's labelled images.
_KAGGLE_43 = [("b5", 85.62, 84.52), ("b5-ap", 85.38, 84.55), ("b5-ns", 87.08, 85.81)]
_KAGGLE_44 = [("b5", 79.49, 78.47), ("b5-ap", 81.75, 80.57), ("b5-ns", 82.84, 81.60)]
_APTOS_45 = [("b5", 70.73), ("b5-ap", 72.61), ("b5-ns", 74.25)]


def _thesis_rows() -> list[Row]:
    rows = []
    for (table, dataset), variants in _CIFAR.items():
        title = f"{table} {'CIFAR-10' if dataset == 'cifar10' else 'CIFAR-100'}"
        for variant, scratch, transfer in variants:
            suffix = ",cifar100" if dataset == "cifar100" else ""
            rows.append(Row(
                name=f"{table}/{variant}-scratch", table=title, data=dataset,
                config=f"configs/cifar.py:{variant}{suffix}",
                thesis=(("test", scratch),), cost=_CIFAR_COST,
            ))  # fmt: skip
            rows.append(Row(
                name=f"{table}/{variant}-transfer", table=title, data=dataset,
                config=f"configs/cifar.py:{variant},transfer{suffix}",
                weights=f"{IMAGENET}-{variant}",
                thesis=(("test", transfer),), cost=_CIFAR_COST,
            ))  # fmt: skip
    for table, title, arg, figures in [
        ("4.3", "4.3 Kaggle 2015, natural shares, no RandAugment", "b5", _KAGGLE_43),
        ("4.4", "4.4 Kaggle 2015, BalancedSampler + RandAugment", "b5,sampler,randaugment",
         _KAGGLE_44),
    ]:  # fmt: skip
        for weights, public, private in figures:
            rows.append(Row(
                name=f"{table}/{weights}", table=title, data="kaggle_dr",
                config=f"configs/kaggle_dr.py:{arg}", weights=weights,
                splits=("public_test", "private_test"),
                thesis=(("public_test", public), ("private_test", private)), cost=_KAGGLE_COST,
            ))  # fmt: skip
    for weights, figure in _APTOS_45:
        rows.append(Row(
            name=f"4.5/{weights}", table="4.5 APTOS 2019 labelled images, Kaggle-trained",
            config="", data="aptos2019", splits=("train",), thesis=(("train", figure),),
            evaluate_run_of=f"4.3/{weights}",
            cost="evaluation only (build APTOS with --val_fraction=0: every image in train)",
        ))  # fmt: skip
    return rows


THESIS_ROWS: tuple[Row, ...] = tuple(_thesis_rows())
