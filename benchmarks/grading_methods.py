"""What the competition-winning grading methods add over a converged softmax baseline.

    python -m benchmarks.grading_methods [--preset=varied|hard] [--out=DIR]
    python -m benchmarks.grading_methods --protocol=FILE [--preset=P] [--out=DIR]

Everything is fixed by a protocol file written before any test figure was computed
(``benchmarks/protocols/grading_methods.json`` unless ``--protocol`` names another): the
synthetic_dr preset and sizes, the training seeds, every arm's settings, the table's rows, the
primary endpoint (test quadratic weighted kappa, row minus its reference row) and the
multiplicity correction (Holm over the table). The SHA-256 of the protocol's bytes is printed
first and written into the results; a flag that contradicts the protocol is refused.

For every head (softmax, regression with SmoothL1, ordinal CORN) and every seed, EfficientNet-
Lite0 is fine-tuned from its ImageNet weights with the demo recipe on a plateau learning-rate
schedule, with early stopping on validation kappa: training runs in chunks of epochs (raising
``train.epochs`` extends a run on the same schedule) until, after ``min_epochs``, the best
validation kappa is ``patience`` epochs old, or ``max_epochs`` is reached; the exported model
holds the best validation weights. Every head gets the same classifier initialisation (the
protocol's).

Test grades are read in several ways, everything fitted on validation only: argmax, cut points
fitted for kappa, an own-eye second stage (a multinomial logistic regression on the image's own
log probabilities: recalibration alone) and the fellow-eye second stage of the same form (own
and fellow eye), so that the fellow-eye row's difference to the own-eye row is what the fellow
eye adds. Intervals are hierarchical bootstraps (seeds, then test patients, paired by seed index
and patient); each seed's figure is listed. Writes DIR/PRESET/results.json and prints the table.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import time

import numpy as np
from absl import app, flags

from benchmarks import protocol as protocols

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line; defined when run, so that both benchmarks can be imported together."""
    protocols.define_common_flags("grading_methods", "/tmp/effdr_grading_methods")
    # Further settings the protocol fixes: accepted only when they agree with it.
    flags.DEFINE_integer("rounds", None, "Must equal the protocol's statistics.rounds.")
    flags.DEFINE_integer("max_epochs", None, "Must equal the protocol's early_stopping.max_epochs.")


BENCHMARK = "grading_methods"
DECODES = ("argmax", "cuts", "own_eye", "fellow_eye")


def overrides(values: dict) -> dict:
    """The protocol-fixing flags among ``values`` (flag name -> value, None when not given),
    as ``protocol.check_overrides`` reads them."""
    return {
        "num_images": (("data", "num_images"), values.get("num_images")),
        "image_size": (("data", "image_size"), values.get("image_size")),
        "rounds": (("statistics", "rounds"), values.get("rounds")),
        "max_epochs": (("training", "early_stopping", "max_epochs"), values.get("max_epochs")),
    }


def check(protocol: dict, path: str) -> None:
    """Refuses a protocol whose rows name heads, decodes or rows it does not define."""
    from effdr_tf.errors import EffdrError

    heads = set(protocol["training"]["heads"])
    names = set()
    for row in protocol["rows"]:
        if row["head"] not in heads:
            raise EffdrError(f"{path}: row {row['name']!r} reads head {row['head']!r}, not trained")
        if row["decode"] not in DECODES:
            raise EffdrError(f"{path}: row {row['name']!r}: decode must be one of {DECODES}")
        if row.get("versus") and row["versus"] not in names:
            raise EffdrError(f"{path}: row {row['name']!r} compares with a later or unknown row")
        names.add(row["name"])
    if len(protocol["training"]["seeds"]) < 1:
        raise EffdrError(f"{path}: training.seeds is empty")


def validation_kappas(run_dir: str) -> list[float]:
    """Validation kappa per finished epoch, from the run's log.csv (the last row of an epoch
    counts, should a resumed run have logged it twice)."""
    path = os.path.join(run_dir, "log.csv")
    if not os.path.exists(path):
        return []
    by_epoch = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            if row.get("val_kappa"):
                by_epoch[int(row["epoch"])] = float(row["val_kappa"])
    return [by_epoch[e] for e in sorted(by_epoch)]


def should_stop(kappas: list[float], patience: int, max_epochs: int, min_epochs: int = 0) -> bool:
    """Early stopping: after at least ``min_epochs``, the best validation kappa is ``patience``
    epochs old, or the run is at its longest. A later epoch must beat the best strictly, as the
    loop keeps best weights; ``min_epochs`` keeps a slow start (kappa 0 while every image is
    graded 0) from ending a run."""
    if len(kappas) >= max_epochs:
        return True
    if len(kappas) < max(1, min_epochs):
        return False
    return len(kappas) - 1 - int(np.argmax(kappas)) >= patience


def _same_classifier_initializer(spec: dict) -> None:
    """Every head's classifier starts from ``spec``: the model builder asks
    ``heads.kernel_initializer`` for it, which otherwise differs between heads."""
    from effdr_tf.models import heads

    heads.kernel_initializer = lambda head: copy.deepcopy(spec)


def _config(protocol: dict, head: str, seed: int, data_dir: str, weights: str):
    from configs import demo

    t = protocol["training"]
    config = demo.get_config(protocol["model"]["variant"])
    config.seed = seed
    config.data.data_dir = data_dir
    config.model.weights = weights
    config.model.head = head
    config.train.regression_loss = protocol["model"]["regression_loss"]
    config.train.learning_rate = t["learning_rate"]
    config.train.schedule = t["schedule"]
    config.train.plateau_patience = t["plateau_patience"]
    config.train.plateau_factor = t["plateau_factor"]
    return config


def train(protocol: dict, head: str, seed: int, data_dir: str, weights: str, run_dir: str):
    """Trains (or resumes) one arm's seed to the early-stopping rule; returns its record."""
    from effdr_tf.training import loop

    stop = protocol["training"]["early_stopping"]
    config = _config(protocol, head, seed, data_dir, weights)
    seconds_path = os.path.join(run_dir, "train_seconds.json")
    seconds = 0.0
    if os.path.exists(seconds_path):
        with open(seconds_path) as f:
            seconds = json.load(f)
    while not should_stop(
        kappas := validation_kappas(run_dir),
        stop["patience_epochs"],
        stop["max_epochs"],
        stop.get("min_epochs", 0),
    ):
        # Chunk boundaries fixed in epochs, so that a resumed run stops where a whole one would.
        chunk = stop["chunk_epochs"]
        config.train.epochs = min(stop["max_epochs"], (len(kappas) // chunk + 1) * chunk)
        started = time.perf_counter()
        loop.train(config, run_dir, progress=False)
        seconds += time.perf_counter() - started
        os.makedirs(run_dir, exist_ok=True)
        with open(seconds_path, "w") as f:
            json.dump(seconds, f)
    return {
        "epochs": len(kappas),
        "best_epoch": int(np.argmax(kappas)) + 1,
        "validation_kappa": [round(k, 4) for k in kappas],
        "seconds": seconds,
    }


def decode(kind: str, validation: dict, test: dict) -> tuple[np.ndarray, np.ndarray]:
    """Test (grades, probabilities) of one run read one way, fitted on validation only."""
    from effdr_tf.evaluation import fellow_eye, thresholds

    pv, pt = validation["probabilities"], test["probabilities"]
    if kind == "argmax":
        return pt.argmax(1), pt
    if kind == "cuts":
        k = pt.shape[1]
        cuts, _ = thresholds.fit(thresholds.expected_grade(pv), validation["labels"], k)
        return thresholds.apply(thresholds.expected_grade(pt), cuts), pt
    stage = fellow_eye.fit(
        pv,
        validation["labels"],
        validation["patient_ids"],
        validation["eyes"],
        own_only=kind == "own_eye",
    )
    p = stage.apply(pt, test["patient_ids"], test["eyes"])
    return p.argmax(1), p


def assemble(protocol: dict, scored: dict) -> dict:
    """The table from scored runs, without any training.

    Args:
        protocol: the loaded protocol.
        scored: (head, seed, tta) -> {"validation": split, "test": split}, each split a dict
            of ``probabilities`` [N, K], ``labels``, ``patient_ids``, ``eyes`` and ``ids`` in
            the same order for every run.

    Returns:
        ``rows``: the table entries (``protocol.table``); ``labels`` and ``patients`` of test.
    """
    seeds = protocol["training"]["seeds"]
    first = next(iter(scored.values()))["test"]
    for run in scored.values():  # every arm is compared on the same photographs, in order
        if not np.array_equal(run["test"]["ids"], first["ids"]):
            raise ValueError("runs scored the test images in different orders")
    arms = {
        row["name"]: [decode(row["decode"], **scored[row["head"], s, row["tta"]]) for s in seeds]
        for row in protocol["rows"]
    }
    s = protocol["statistics"]
    rows = protocols.table(
        first["labels"], first["patient_ids"], arms, protocol["rows"],
        rounds=s["rounds"], seed=s["resample_seed"],
    )  # fmt: skip
    return {"rows": rows, "labels": first["labels"], "patients": first["patient_ids"]}


def main(argv):
    del argv
    from effdr_tf import demo
    from effdr_tf.evaluation import scoring

    path = FLAGS.protocol or protocols.default_path(BENCHMARK)
    protocol, digest = protocols.load(path)
    protocols.expect(protocol, path, BENCHMARK)
    protocols.check_overrides(protocol, path, overrides(FLAGS.flag_values_dict()))
    check(protocol, path)
    preset = protocols.choose_preset(protocol, path, FLAGS.preset)
    print(f"protocol {path} sha256 {digest}; preset {preset}", flush=True)

    d = protocol["data"]
    out = os.path.join(FLAGS.out, preset)
    data_dir = os.path.join(out, "data")
    started = time.perf_counter()
    from benchmarks import synthetic_shards

    synthetic_shards.build_preset(
        data_dir, preset, d["image_size"], d["num_images"], val_fraction=d["val_fraction"],
        preprocess=d["preprocess"], seed=d["data_seed"],
    )  # fmt: skip
    build_seconds = time.perf_counter() - started
    _same_classifier_initializer(protocol["model"]["classifier_initializer"])
    weights = demo.lite0_weights()
    runs = {}
    for head in protocol["training"]["heads"]:
        for seed in protocol["training"]["seeds"]:
            run_dir = os.path.join(out, f"{head}_seed{seed}")
            runs[head, seed] = train(protocol, head, seed, data_dir, weights, run_dir)
            print(f"{head} seed {seed}: {runs[head, seed]}", flush=True)

    needed = {(r["head"], r["tta"]) for r in protocol["rows"]}
    scored, eval_seconds = {}, {}
    for head, tta in sorted(needed):
        for seed in protocol["training"]["seeds"]:
            run = scoring.load_run(os.path.join(out, f"{head}_seed{seed}"))
            t = time.perf_counter()
            scored[head, seed, tta] = {
                split: scoring.score_split(run, data_dir, split, tta=tta)
                for split in ("validation", "test")
            }
            eval_seconds[f"{head}_seed{seed}/{tta}"] = time.perf_counter() - t
    table = assemble(protocol, scored)
    summary = {
        "protocol": {"path": os.path.abspath(path), "sha256": digest},
        "preset": preset,
        "setting": {
            **d,
            "validation_images": int(len(next(iter(scored.values()))["validation"]["labels"])),
            "test_images": int(len(table["labels"])),
            "test_patients": int(len(np.unique(table["patients"]))),
        },
        "runs": {f"{h}_seed{s}": v for (h, s), v in runs.items()},
        "seconds": {"build": build_seconds, "eval": eval_seconds},
        "rows": table["rows"],
    }
    from effdr_tf import fileio

    fileio.write_atomic(os.path.join(out, "results.json"), json.dumps(summary, indent=2))
    s = summary["setting"]
    print(
        f"\nprotocol sha256 {digest}\nsynthetic_dr {preset}, {d['num_images']} images at "
        f"{d['image_size']} px; validation {s['validation_images']}, test {s['test_images']} "
        f"images ({s['test_patients']} patients); seeds {protocol['training']['seeds']}; "
        f"Holm over {sum(1 for r in table['rows'] if r['versus'])} kappa comparisons "
        "(* : significant at 0.05 after Holm)\n"
    )
    print(protocols.markdown(table["rows"]))
    print("\nruns (epochs trained, best epoch, training seconds):")
    for name, r in summary["runs"].items():
        print(f"  {name}: {r['epochs']} epochs, best {r['best_epoch']}, {r['seconds']:.0f} s")


if __name__ == "__main__":
    from effdr_tf import cli

    define_flags()
    app.run(cli.entry_point(main), flags_parser=cli.parse_flags_or_exit)
