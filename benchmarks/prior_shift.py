"""Calibration of a model trained with the balanced sampler, before and after the prior
correction (effdr_tf/evaluation/priors.py).

    python -m benchmarks.prior_shift [--num_images=1600] [--epochs=6] [--image_size=128] [--out=DIR]

Builds synthetic_dr with ``--synthetic_preset=hard`` (EyePACS grade shares: about three in four
photographs grade 0; faint lesions and labels moved across neighbouring grades, so the model's
probabilities are not all near 0 or 1), trains EfficientNet-Lite0 from its ImageNet weights
with the demo recipe (configs/demo.py) and the thesis's BalancedSampler
(``balance.target=balanced_sampler``: every grade drawn equally often), then scores the test
split twice: as the model learnt it (``load_run(prior_correction=False)``) and moved to the
training split's natural shares (``load_run``, the default).

Figures on test, each with its patient-level bootstrap 95 % interval (both eyes of a patient
drawn together): expected calibration error of the top-class confidence (15 bins), negative
log-likelihood, the referable score's Brier score and its calibration in the large (mean
referable score minus the share of referable photographs), and quadratic weighted kappa and
accuracy of the argmax grade; then the paired interval of each difference (after - before).
ECE is biased upwards in a resample (repeated photographs fill its bins unevenly), so its
percentile interval can sit above the point estimate: read the paired difference. Prints a
Markdown table; writes DIR/results.json.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_images", 1600, "synthetic_dr images (two eyes per patient).")
flags.DEFINE_integer("image_size", 128, "Shard and model input size.")
flags.DEFINE_integer("epochs", 6, "Training epochs.")
flags.DEFINE_float("val_fraction", 0.2, "Validation patients carved from train.")
flags.DEFINE_integer("rounds", 1000, "Patient bootstrap rounds.")
flags.DEFINE_string("out", "/tmp/effdr_prior_shift", "Work folder.")

REFERABLE = 2


def figures(labels: np.ndarray, probs: np.ndarray) -> dict:
    """The calibration and grading figures of one set of test probabilities."""
    from benchmarks import paired
    from effdr_tf.evaluation import clinical

    probs = np.asarray(probs, np.float64)
    referable = (labels >= REFERABLE).astype(np.float64)
    score = probs[:, REFERABLE:].sum(1)
    picked = np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)
    return {
        "ece": clinical.expected_calibration_error(labels, probs)["ece"],
        "nll": float(-np.mean(np.log(picked))),
        "referable_brier": float(np.mean((score - referable) ** 2)),
        "referable_in_the_large": float(score.mean() - referable.mean()),
        "kappa": paired.kappa(labels, probs.argmax(1), probs.shape[1]),
        "accuracy": float(np.mean(probs.argmax(1) == labels)),
    }


def bootstrap(labels, patients, before, after, rounds: int, seed: int = 0) -> dict:
    """Patient-level 95 % percentile intervals of each figure before, after, and of the
    difference, from the same resamples."""
    from effdr_tf.evaluation import clinical

    # The project's cluster bootstrap draws the patients; every figure is computed on the rows
    # of each round's draw (a patient drawn twice counts twice).
    boot = clinical.ClusterBootstrap(patients, len(labels), rounds=rounds, seed=seed)
    draws = {"before": [], "after": [], "difference": []}
    for counts in boot.counts:
        rows = np.repeat(np.arange(len(labels)), counts[boot.cluster].astype(np.int64))
        b, a = figures(labels[rows], before[rows]), figures(labels[rows], after[rows])
        draws["before"].append(b)
        draws["after"].append(a)
        draws["difference"].append({k: a[k] - b[k] for k in a})
    return {
        part: {
            k: [float(np.percentile([d[k] for d in rows], q)) for q in (2.5, 97.5)] for k in rows[0]
        }
        for part, rows in draws.items()
    }


def _build(folder: str) -> None:
    from benchmarks import synthetic_shards

    synthetic_shards.build_hard(folder, FLAGS.image_size, FLAGS.num_images, FLAGS.val_fraction)


def _train(run_dir: str, data_dir: str, weights: str) -> float:
    from configs import demo
    from effdr_tf.training import loop

    seconds_file = os.path.join(run_dir, "train_seconds.json")
    if os.path.exists(os.path.join(run_dir, "export", "model.keras")):
        with open(seconds_file) as f:
            return json.load(f)
    config = demo.get_config()
    config.data.data_dir = data_dir
    config.model.weights = weights
    config.balance.target = "balanced_sampler"
    # Auto (recipes.bn_momentum): with about 60 steps an epoch the reference 0.99 leaves the
    # batch-norm averages that evaluation uses behind the weights.
    config.model.bn_momentum = -1.0
    config.train.epochs = FLAGS.epochs
    started = time.perf_counter()
    loop.train(config, run_dir, progress=False)
    seconds = time.perf_counter() - started
    with open(seconds_file, "w") as f:
        json.dump(seconds, f)
    return seconds


ROWS = (  # key, label, format
    ("ece", "ECE (top-class confidence, 15 bins)", "{:.3f}"),
    ("nll", "negative log-likelihood", "{:.3f}"),
    ("referable_brier", "referable score: Brier", "{:.3f}"),
    ("referable_in_the_large", "referable score: mean - referable share", "{:+.3f}"),
    ("kappa", "quadratic weighted kappa (argmax)", "{:.3f}"),
    ("accuracy", "accuracy (argmax)", "{:.3f}"),
)


def main(argv):
    del argv
    from effdr_tf import demo, fileio
    from effdr_tf.evaluation import scoring

    os.makedirs(FLAGS.out, exist_ok=True)
    data_dir = os.path.join(FLAGS.out, "data")
    run_dir = os.path.join(FLAGS.out, "run")
    _build(data_dir)
    train_seconds = _train(run_dir, data_dir, demo.lite0_weights())

    raw = scoring.load_run(run_dir, prior_correction=False)
    corrected = scoring.load_run(run_dir)
    before = scoring.score_split(raw, data_dir, "test")
    after = scoring.score_split(corrected, data_dir, "test")
    assert np.array_equal(before["ids"], after["ids"])
    labels, patients = before["labels"], before["patient_ids"]
    p_before = before["probabilities"].astype(np.float64)
    p_after = after["probabilities"].astype(np.float64)
    result = {
        "setting": {
            "num_images": FLAGS.num_images,
            "image_size": FLAGS.image_size,
            "preset": "hard",
            "epochs": FLAGS.epochs,
            "balance_target": "balanced_sampler",
            "train_seconds": train_seconds,
            "test_images": int(len(labels)),
            "test_patients": int(len(np.unique(patients))),
            "rounds": FLAGS.rounds,
        },
        "prior_correction": corrected.prior_correction,
        "before": figures(labels, p_before),
        "after": figures(labels, p_after),
        "interval_95": bootstrap(labels, patients, p_before, p_after, FLAGS.rounds),
    }
    fileio.write_atomic(os.path.join(FLAGS.out, "results.json"), json.dumps(result, indent=2))

    s, prior = result["setting"], result["prior_correction"]
    print(
        f"synthetic_dr hard, {s['num_images']} images at {s['image_size']} px; Lite0, demo "
        f"recipe with the balanced sampler, {s['epochs']} epochs ({train_seconds:.0f} s); test "
        f"{s['test_images']} images of {s['test_patients']} patients, intervals over "
        f"{s['rounds']} patient resamples"
    )
    print(
        "training shares "
        + ", ".join(f"{v:.3f}" for v in prior["from"])
        + " -> natural "
        + ", ".join(f"{v:.3f}" for v in prior["to"])
        + "\n"
    )
    ci = result["interval_95"]
    print("| figure | before | after | after - before (95 % CI) |")
    print("|---|---|---|---|")
    for key, label, fmt in ROWS:
        b, a = result["before"][key], result["after"][key]
        lo, hi = ci["difference"][key]
        print(
            f"| {label} | {fmt.format(b)} ({fmt.format(ci['before'][key][0])}-"
            f"{fmt.format(ci['before'][key][1])}) | {fmt.format(a)} "
            f"({fmt.format(ci['after'][key][0])}-{fmt.format(ci['after'][key][1])}) | "
            f"{a - b:+.3f} ({lo:+.3f}, {hi:+.3f}) |"
        )


if __name__ == "__main__":
    app.run(main)
