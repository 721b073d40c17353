"""What the competition-winning grading methods add, on the hard synthetic_dr setting.

    python -m benchmarks.grading_methods [--num_images=1600] [--image_size=128] [--out=DIR]

Builds synthetic_dr with ``--synthetic_preset=hard`` (fewer, smaller, fainter lesions; labels
moved across neighbouring grades as graders disagree), trains EfficientNet-Lite0 from its
ImageNet weights with the demo recipe (configs/demo.py) four times: softmax (two seeds),
regression (SmoothL1) and ordinal (CORN); then scores validation and test and reads the test
grades in several ways. Everything fitted (cut points, the fellow-eye stage) is fitted on
validation only.

Rows: the baseline (softmax, argmax: the thesis's recipe), each method alone, and all together.
For each: test quadratic weighted kappa, referable-DR AUC, the paired bootstrap 95 % interval of
the difference to the baseline (test patients resampled, both eyes together, 1000 rounds), and
the training and evaluation time it adds. Prints a Markdown table; writes DIR/results.json.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from absl import app, flags

from benchmarks import paired

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_images", 1600, "synthetic_dr images (two eyes per patient).")
flags.DEFINE_integer("image_size", 128, "Shard and model input size.")
flags.DEFINE_integer("epochs", 2, "Training epochs per run (the demo recipe's).")
flags.DEFINE_float("val_fraction", 0.2, "Validation patients carved from train.")
flags.DEFINE_integer("rounds", 1000, "Paired bootstrap rounds.")
flags.DEFINE_string("out", "/tmp/effdr_grading_methods", "Work folder.")

RUNS = {  # name: (head, seed)
    "softmax": ("softmax", 0),
    "softmax_seed1": ("softmax", 1),
    "regression": ("regression", 0),
    "ordinal": ("ordinal", 0),
}


def _build(folder: str) -> None:
    from benchmarks import synthetic_shards

    synthetic_shards.build_hard(folder, FLAGS.image_size, FLAGS.num_images, FLAGS.val_fraction)


def _train(name: str, head: str, seed: int, data_dir: str, weights: str) -> float:
    from configs import demo
    from effdr_tf.training import loop

    run_dir = os.path.join(FLAGS.out, name)
    if os.path.exists(os.path.join(run_dir, "export", "model.keras")):
        with open(os.path.join(run_dir, "train_seconds.json")) as f:
            return json.load(f)
    config = demo.get_config()
    config.seed = seed
    config.data.data_dir = data_dir
    config.model.weights = weights
    config.model.head = head
    config.train.epochs = FLAGS.epochs
    config.train.regression_loss = "smooth_l1"
    started = time.perf_counter()
    loop.train(config, run_dir, progress=False)
    seconds = time.perf_counter() - started
    with open(os.path.join(run_dir, "train_seconds.json"), "w") as f:
        json.dump(seconds, f)
    return seconds


def main(argv):
    del argv
    from effdr_tf import demo
    from effdr_tf.evaluation import fellow_eye, scoring, thresholds

    os.makedirs(FLAGS.out, exist_ok=True)
    data_dir = os.path.join(FLAGS.out, "data")
    started = time.perf_counter()
    _build(data_dir)
    build_seconds = time.perf_counter() - started
    weights = demo.lite0_weights()
    train_seconds = {n: _train(n, h, s, data_dir, weights) for n, (h, s) in RUNS.items()}

    scored, eval_seconds = {}, {}
    for name in RUNS:
        run = scoring.load_run(os.path.join(FLAGS.out, name))
        for tta in ("none", "dihedral"):
            t = time.perf_counter()
            scored[name, tta] = {
                split: scoring.score_split(run, data_dir, split, tta=tta)
                for split in ("validation", "test")
            }
            eval_seconds[name, tta] = time.perf_counter() - t

    val, test = scored["softmax", "none"]["validation"], scored["softmax", "none"]["test"]
    y_val, y_test = val["labels"], test["labels"]
    for name, tta in scored:  # every run scored the splits in the same order
        assert np.array_equal(scored[name, tta]["test"]["ids"], test["ids"])

    def probs(names, tta, split):
        return np.mean([scored[n, tta][split]["probabilities"] for n in names], axis=0)

    def decode(names, tta, *, cuts=False, fellow=False):
        """(test grades, test probabilities), everything fitted on validation."""
        pv, pt = probs(names, tta, "validation"), probs(names, tta, "test")
        if fellow:
            stage = fellow_eye.fit(pv, y_val, val["patient_ids"], val["eyes"])
            pt = stage.apply(pt, test["patient_ids"], test["eyes"])
            pv = fellow_eye.out_of_fold(pv, y_val, val["patient_ids"], val["eyes"])
        if not cuts:
            return pt.argmax(1), pt
        c, _ = thresholds.fit(thresholds.expected_grade(pv), y_val, 5)
        return thresholds.apply(thresholds.expected_grade(pt), c), pt

    everything = list(RUNS)
    rows = [  # (method, runs, tta, cuts, fellow)
        ("baseline: softmax, argmax (thesis)", ["softmax"], "none", False, False),
        ("cut points fitted for kappa", ["softmax"], "none", True, False),
        ("regression head (SmoothL1), rounded", ["regression"], "none", False, False),
        ("regression head + fitted cut points", ["regression"], "none", True, False),
        ("ordinal head (CORN), argmax", ["ordinal"], "none", False, False),
        ("fellow-eye second stage", ["softmax"], "none", False, True),
        ("dihedral TTA (8 views)", ["softmax"], "dihedral", False, False),
        ("ensemble of 2 softmax seeds", ["softmax", "softmax_seed1"], "none", False, False),
        ("all: 4-run ensemble + TTA + fellow eye + cut points", everything, "dihedral", True, True),
    ]
    base = decode(["softmax"], "none")
    base_train = train_seconds["softmax"]
    base_eval = eval_seconds["softmax", "none"]
    results = []
    for method, names, tta, cuts, fellow in rows:
        grades, p = decode(names, tta, cuts=cuts, fellow=fellow)
        train = sum(train_seconds[n] for n in names)
        evaluation = sum(eval_seconds[n, tta] for n in names)
        results.append(
            {
                "method": method,
                "kappa": paired.kappa(y_test, grades),
                "referable_auc": paired.referable_auc(y_test, p),
                "difference_95": paired.interval(
                    y_test, test["patient_ids"], base, (grades, p), FLAGS.rounds
                ),
                "train_x": train / base_train,
                "eval_x": evaluation / base_eval,
            }
        )
    summary = {
        "setting": {
            "num_images": FLAGS.num_images,
            "image_size": FLAGS.image_size,
            "preset": "hard",
            "epochs": FLAGS.epochs,
            "validation_images": int(len(y_val)),
            "test_images": int(len(y_test)),
            "test_patients": int(len(np.unique(test["patient_ids"]))),
        },
        "seconds": {
            "build": build_seconds,
            "train": train_seconds,
            "eval": {f"{n}/{t}": s for (n, t), s in eval_seconds.items()},
        },
        "rows": results,
    }
    with open(os.path.join(FLAGS.out, "results.json"), "w") as f:
        json.dump(summary, f, indent=2)
    s = summary["setting"]
    print(
        f"synthetic_dr hard, {s['num_images']} images at {s['image_size']} px; validation "
        f"{s['validation_images']}, test {s['test_images']} images ({s['test_patients']} "
        f"patients); Lite0, demo recipe, {s['epochs']} epochs per run "
        f"(baseline: {base_train:.0f} s training, {base_eval:.0f} s scoring)\n"
    )
    print(
        "| method | test QWK | Δ QWK (95 % CI) | referable AUC | Δ AUC (95 % CI) | train | eval |"
    )
    print("|---|---|---|---|---|---|---|")
    first = results[0]
    for r in results:
        ck, ca = r["difference_95"]["kappa"], r["difference_95"]["auc"]
        print(
            f"| {r['method']} | {r['kappa']:.3f} | {r['kappa'] - first['kappa']:+.3f} "
            f"({ck[0]:+.3f}, {ck[1]:+.3f}) | {r['referable_auc']:.3f} | "
            f"{r['referable_auc'] - first['referable_auc']:+.3f} ({ca[0]:+.3f}, {ca[1]:+.3f}) "
            f"| x{r['train_x']:.1f} | x{r['eval_x']:.1f} |"
        )


if __name__ == "__main__":
    app.run(main)
