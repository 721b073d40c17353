"""The Noisy Student loop: teacher, pseudo-labels, student; the student teaches the next round.

    WORK/round1/pseudo/       the teacher's pseudo-labels (effdr_tf.selftrain.pseudo_labels)
    WORK/round1/student/      the student's run (train.py's model_dir layout)
    WORK/round1/done.json     written last: the round is finished
    WORK/round2/...           taught by round 1's student
    WORK/rounds.json          every finished round's validation figures
    WORK/summary/             the same as TensorBoard scalars, step = round

Every step is resumable: a round with ``done.json`` is skipped, a pseudo-label folder with its
manifest is kept, and a student resumes from its last checkpoint; so a killed loop, run again
with the same arguments, continues in the round and the step where it stopped.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from effdr_tf import fileio
from effdr_tf.errors import EffdrError
from effdr_tf.evaluation import metrics, scoring
from effdr_tf.selftrain import pseudo_labels

DONE = "done.json"
SUMMARY = "summary"  # WORK/summary: one point per model (round 0 is the teacher)

# Noisy Student's noise on the student (Xie et al. 2020, arXiv 1911.04252, sec. 3). RandAugment's
# magnitude stays the recipe's: the paper's 27 was set for ImageNet objects at up to 800 px,
# DR lesions are a few pixels wide and the DR recipes chose their magnitude for them.
PAPER_NOISE = {
    ("model", "dropout_rate"): 0.5,  # dropout 0.5 on the final layer
    ("model", "drop_connect_rate"): 0.2,  # stochastic depth: survival 0.8 at the last block
    ("augment", "name"): "randaugment",
    ("augment", "num_layers"): 2,  # RandAugment N=2
}


def validation_figures(run_dirs, data_dir: str) -> dict:
    """Validation accuracy and quadratic weighted kappa (argmax) of a run or an ensemble."""
    runs = scoring.load_runs(run_dirs)
    scored = scoring.score_split_ensemble(runs, data_dir, "validation")
    k = runs[0].num_classes
    confusion = metrics.confusion_matrix(scored["labels"], scored["probabilities"].argmax(1), k)
    return {
        "count": int(len(scored["labels"])),
        "accuracy": metrics.accuracy(confusion),
        "kappa": metrics.quadratic_weighted_kappa(confusion),
    }


def student_config(config, pseudo_dir: str, soft: bool):
    """The student's training config: ``config`` reading ``pseudo_dir``, with the paper's noise
    when ``selftrain.noise`` is ``paper``."""
    student = config.copy_and_resolve_references()
    student.selftrain.pseudo_dir = pseudo_dir
    student.selftrain.soft = soft
    student.train.export = True
    if student.selftrain.get("noise", "recipe") == "paper":
        for (group, key), value in PAPER_NOISE.items():
            student[group][key] = value
    return student


def write_summary(work_dir: str, table: list[dict]) -> None:
    """Every model's validation kappa and accuracy as TensorBoard scalars, step = round, in
    ``WORK/summary`` (rewritten whole, so a resumed loop shows each round once)."""
    folder = os.path.join(work_dir, SUMMARY)
    if tf.io.gfile.exists(folder):
        tf.io.gfile.rmtree(folder)
    writer = tf.summary.create_file_writer(folder)
    with writer.as_default():
        for row in table:
            tf.summary.scalar("self_training/validation_kappa", row["kappa"], step=row["round"])
            tf.summary.scalar("self_training/validation_accuracy", row["accuracy"], row["round"])
            if "pseudo_labelled" in row:
                tf.summary.scalar(
                    "self_training/pseudo_labelled", row["pseudo_labelled"], row["round"]
                )
    writer.close()


def _read_json(path: str):
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def self_train(
    config,
    teacher: str,
    work_dir: str,
    *,
    rounds: int = 2,
    unlabelled_dir: str | None = None,
    threshold: float = 0.0,
    per_class: int = 0,
    soft: bool = True,
    tta: str = "none",
    strategy: str = "default",
    progress: bool = True,
) -> list[dict]:
    """Runs (or resumes) ``rounds`` rounds; returns one row per model: the teacher, then each
    round's student, with validation accuracy and kappa.

    Args:
        config: the student's training config (data.data_dir: the labelled shards with a
            validation split); ``selftrain.pseudo_dir`` is set per round.
        teacher: the first teacher's run folder (or several, comma-separated: an ensemble).
        work_dir: where the rounds live.
        rounds: how many students to train, each taught by the previous one.
        unlabelled_dir: the shards with the ``unlabelled`` split; default ``data.data_dir``.
        threshold, per_class, soft, tta: pseudo-label selection (``pseudo_labels.write``).
        strategy: how each student trains (train.py's ``--strategy``).
    """
    from effdr_tf.training import loop

    data_dir = config.data.data_dir
    if not data_dir:
        raise EffdrError("config.data.data_dir: the labelled shards are needed")
    if rounds < 1:
        raise EffdrError(f"--rounds={rounds}: must be at least 1")
    unlabelled_dir = unlabelled_dir or data_dir
    tf.io.gfile.makedirs(work_dir)
    table = [{"round": 0, "model": teacher, **validation_figures(teacher, data_dir)}]
    current = teacher
    for r in range(1, rounds + 1):
        folder = os.path.join(work_dir, f"round{r}")
        done = os.path.join(folder, DONE)
        student = os.path.join(folder, "student")
        if tf.io.gfile.exists(done):
            row = _read_json(done)
        else:
            if progress:
                print(f"round {r}/{rounds}: pseudo-labels from {current}")
            pseudo = os.path.join(folder, "pseudo")
            manifest = pseudo_labels.write(
                current,
                unlabelled_dir,
                pseudo,
                tta=tta,
                threshold=threshold,
                per_class=per_class,
                soft=soft,
                seed=int(config.seed) + r,
            )
            if progress:
                print(
                    f"round {r}/{rounds}: {manifest['splits']['train']['count']} pseudo-labelled "
                    f"images; training the student in {student}"
                )
            round_config = student_config(config, pseudo, soft)
            loop.train(round_config, student, strategy=strategy, progress=progress)
            row = {
                "round": r,
                "model": student,
                "teacher": current,
                "pseudo_labelled": manifest["splits"]["train"]["count"],
                **validation_figures(student, data_dir),
            }
            fileio.write_atomic(done, json.dumps(row, indent=1))
        table.append(row)
        current = student
    fileio.write_atomic(os.path.join(work_dir, "rounds.json"), json.dumps(table, indent=1))
    write_summary(work_dir, table)
    return table
