"""The Noisy Student loop: teacher, pseudo-labels, student; the student teaches the next round.

    WORK/round1/pseudo/       the teacher's pseudo-labels (effdr_tf.selftrain.pseudo_labels)
    WORK/round1/student/      the student's run (train.py's model_dir layout)
    WORK/round1/done.json     written last: the round is finished
    WORK/round2/...           taught by round 1's student
    WORK/rounds.json          every finished round's validation figures

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
            round_config = config.copy_and_resolve_references()
            round_config.selftrain.pseudo_dir = pseudo
            round_config.selftrain.soft = soft
            round_config.train.export = True
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
    return table
