"""Noisy Student with few grades: does the student beat a control matched in noise and steps?

    python -m benchmarks.self_training [--preset=varied|hard] [--out=DIR]
    python -m benchmarks.self_training --protocol=FILE [--preset=P] [--out=DIR]

Everything is fixed by a protocol file written before any test figure was computed
(``benchmarks/protocols/self_training.json`` unless ``--protocol`` names another): preset,
sizes, the labelled budget, seeds, epochs, the pseudo-label selection, the noise, the table's
rows and the primary endpoint (test quadratic weighted kappa of the student minus the matched
control). The SHA-256 of the protocol's bytes is printed first and written into the results; a
flag that contradicts the protocol is refused.

The labelled budget counts validation: ``labelled_fraction`` of the non-test patients carry
grades, ``val_fraction`` of them form validation and the rest of the budget trains; the other
training patients have their grades withheld (the ``unlabelled`` split). For each training seed,
EfficientNet-Lite0 from its ImageNet weights with the demo recipe:

- teacher: the labelled training images, ``teacher_epochs``;
- students (self_train.py): pseudo-labels from the previous model (soft, at the confidence
  threshold, ``per_class`` images of each grade: balanced), labelled and pseudo-labelled images
  in each batch, with the protocol's noise (dropout, stochastic depth, RandAugment);
- control: the labelled images only, with the same noise and the same number of steps as a
  student, so that a student's gain is neither more training nor more regularisation.

Intervals are hierarchical bootstraps (seeds, then test patients, paired by seed index and
patient); each seed's figure is listed; Holm over the table's kappa comparisons. Writes
DIR/PRESET/results.json and prints the table.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from absl import app, flags

from benchmarks import protocol as protocols

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line; defined when run, so that both benchmarks can be imported together."""
    protocols.define_common_flags("self_training", "/tmp/effdr_self_training")
    # Further settings the protocol fixes: accepted only when they agree with it.
    flags.DEFINE_integer("teacher_epochs", None, "Must equal the protocol's teacher_epochs.")
    flags.DEFINE_integer("student_epochs", None, "Must equal the protocol's student_epochs.")
    flags.DEFINE_float("threshold", None, "Must equal the protocol's threshold.")
    flags.DEFINE_integer("bootstrap", None, "Must equal the protocol's statistics.rounds.")


BENCHMARK = "self_training"


def overrides(values: dict) -> dict:
    """The protocol-fixing flags among ``values`` (flag name -> value, None when not given),
    as ``protocol.check_overrides`` reads them."""
    return {
        "num_images": (("data", "num_images"), values.get("num_images")),
        "image_size": (("data", "image_size"), values.get("image_size")),
        "teacher_epochs": (("training", "teacher_epochs"), values.get("teacher_epochs")),
        "student_epochs": (("training", "student_epochs"), values.get("student_epochs")),
        "threshold": (("training", "threshold"), values.get("threshold")),
        "bootstrap": (("statistics", "rounds"), values.get("bootstrap")),
    }


def withhold_fraction(labelled_fraction: float, val_fraction: float, path: str = "") -> float:
    """The builder's ``withhold_labels`` that leaves ``labelled_fraction`` of the non-test
    patients graded, validation (``val_fraction`` of them, carved first) included."""
    from effdr_tf.errors import EffdrError

    if not 0 < val_fraction < labelled_fraction <= 1:
        raise EffdrError(
            f"{path}: need 0 < val_fraction ({val_fraction}) < labelled_fraction "
            f"({labelled_fraction}) <= 1: validation is part of the labelled budget"
        )
    return 1.0 - (labelled_fraction - val_fraction) / (1.0 - val_fraction)


def arm_names(protocol: dict) -> list[str]:
    return ["teacher", "control"] + [
        f"student{r}" for r in range(1, protocol["training"]["rounds"] + 1)
    ]


def check(protocol: dict, path: str) -> None:
    """Refuses rows that read arms the protocol does not train."""
    from effdr_tf.errors import EffdrError

    names = set()
    for row in protocol["rows"]:
        if row.get("arm", row["name"]) not in arm_names(protocol):
            raise EffdrError(f"{path}: row {row['name']!r} reads an arm that is not trained")
        if row.get("versus") and row["versus"] not in names:
            raise EffdrError(f"{path}: row {row['name']!r} compares with a later or unknown row")
        names.add(row["name"])
    if not protocol["training"]["seeds"]:
        raise EffdrError(f"{path}: training.seeds is empty")


def with_noise(config, noise: dict):
    """``config`` with the protocol's noise keys (``group.key``: value) set."""
    for key, value in noise.items():
        group, name = key.split(".")
        config[group][name] = value
    return config


def _recipe(protocol: dict, data_dir: str, weights: str, epochs: int, seed: int):
    from configs import demo

    config = demo.get_config(protocol["model"]["variant"])
    config.seed = seed
    config.data.data_dir = data_dir
    config.model.weights = weights
    config.train.epochs = epochs
    config.train.decay_epochs = epochs / protocol["training"]["decays_per_run"]
    # Every run here is a few hundred steps: at 0.9 the moving statistics catch up within an
    # epoch (docs/training.md); one fixed value so that no model gets a different one.
    config.model.bn_momentum = protocol["model"]["bn_momentum"]
    return config


def control_epochs(protocol: dict) -> int:
    """A student's steps in epochs of the labelled images: each student epoch reads the
    labelled images once, as ``1 - pseudo_fraction`` of its batches."""
    t = protocol["training"]
    return int(round(t["student_epochs"] / (1 - t["pseudo_fraction"])))


def _timed(path: str, fn) -> float:
    """Runs ``fn`` unless a finished run left its time in ``path``."""
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    started = time.perf_counter()
    fn()
    seconds = time.perf_counter() - started
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(seconds, f)
    return seconds


def _labels_by_id(folder: str, split: str) -> dict[str, int]:
    """The grade of every record of ``split`` in a shard folder, by image id."""
    import tensorflow as tf

    from effdr_tf import constants
    from effdr_tf.pipeline import input as pipeline

    shards = pipeline.split_shards(folder, split, "none", pipeline.load_manifest(folder))
    out = {}
    for record in tf.data.TFRecordDataset([s["path"] for s in shards]):
        features = pipeline.parse(record)
        out[features[constants.FEATURE_ID].numpy().decode()] = int(
            features[constants.FEATURE_LABEL]
        )
    return out


def pseudo_label_agreement(graded: dict, withheld: dict) -> dict:
    """How often pseudo-labels (image id -> grade) agree with the withheld grades."""
    from benchmarks import paired

    ids = [i for i in graded if i in withheld]
    truth = np.array([withheld[i] for i in ids])
    guess = np.array([graded[i] for i in ids])
    return {
        "images": len(graded),
        "of_unlabelled": len(withheld),
        "agreement": float(np.mean(truth == guess)) if ids else float("nan"),
        "kappa": paired.kappa(truth, guess) if ids else float("nan"),
    }


def assemble(protocol: dict, scored: dict) -> dict:
    """The table from scored test splits, without any training.

    Args:
        protocol: the loaded protocol.
        scored: (arm, seed) -> the test split scored (``probabilities``, ``labels``,
            ``patient_ids``, ``ids``), in the same order for every model.
    """
    seeds = protocol["training"]["seeds"]
    first = next(iter(scored.values()))
    for s in scored.values():
        if not np.array_equal(s["ids"], first["ids"]):
            raise ValueError("models scored the test images in different orders")
    arms = {
        a: [(scored[a, s]["probabilities"].argmax(1), scored[a, s]["probabilities"]) for s in seeds]
        for a in arm_names(protocol)
    }
    st = protocol["statistics"]
    rows = protocols.table(
        first["labels"], first["patient_ids"], arms, protocol["rows"],
        rounds=st["rounds"], seed=st["resample_seed"],
    )  # fmt: skip
    return {"rows": rows, "labels": first["labels"], "patients": first["patient_ids"]}


def main(argv):
    del argv
    from benchmarks import synthetic_shards
    from effdr_tf import demo, fileio
    from effdr_tf.data.sources.synthetic_dr import SyntheticDR
    from effdr_tf.evaluation import scoring
    from effdr_tf.selftrain import rounds
    from effdr_tf.training import loop

    path = FLAGS.protocol or protocols.default_path(BENCHMARK)
    protocol, digest = protocols.load(path)
    protocols.expect(protocol, path, BENCHMARK)
    protocols.check_overrides(protocol, path, overrides(FLAGS.flag_values_dict()))
    check(protocol, path)
    preset = protocols.choose_preset(protocol, path, FLAGS.preset)
    print(f"protocol {path} sha256 {digest}; preset {preset}", flush=True)
    d, t = protocol["data"], protocol["training"]
    withhold = withhold_fraction(d["labelled_fraction"], d["val_fraction"], path)

    out = os.path.join(FLAGS.out, preset)
    data_dir = os.path.join(out, "data")
    seconds = {
        "build": _timed(
            os.path.join(out, "seconds", "build.json"),
            lambda: synthetic_shards.build_preset(
                data_dir,
                preset,
                d["image_size"],
                d["num_images"],
                val_fraction=d["val_fraction"],
                withhold_labels=withhold,
                preprocess=d["preprocess"],
                seed=d["data_seed"],
            ),  # fmt: skip
        )
    }
    with open(os.path.join(data_dir, "manifest.json")) as f:
        counts = {k: v["count"] for k, v in json.load(f)["splits"].items()}
    weights = demo.lite0_weights()
    source = SyntheticDR(
        num_images=d["num_images"], seed=d["data_seed"], image_size=d["image_size"], preset=preset
    )
    truth = {r.id: r.label for r in source.scan()}
    withheld = {i: truth[i] for i in _labels_by_id(data_dir, "unlabelled")}

    models, agreement = {}, {}
    for seed in t["seeds"]:
        folder = os.path.join(out, f"seed{seed}")
        timing = os.path.join(folder, "seconds")
        teacher_dir = os.path.join(folder, "teacher")
        teacher = _recipe(protocol, data_dir, weights, t["teacher_epochs"], seed)
        seconds[f"teacher_seed{seed}"] = _timed(
            os.path.join(timing, "teacher.json"),
            lambda c=teacher, m=teacher_dir: loop.train(c, m, progress=False),
        )
        student = with_noise(
            _recipe(protocol, data_dir, weights, t["student_epochs"], seed), t["noise"]
        )
        student.selftrain.noise = "recipe"  # the protocol's noise, set above, and no other
        student.selftrain.pseudo_fraction = t["pseudo_fraction"]
        work = os.path.join(folder, "rounds")
        for r in range(1, t["rounds"] + 1):  # one call per round, to time each (it resumes)
            seconds[f"round{r}_seed{seed}"] = _timed(
                os.path.join(timing, f"round{r}.json"),
                lambda r=r, c=student, m=teacher_dir, w=work: rounds.self_train(
                    c,
                    m,
                    w,
                    rounds=r,
                    threshold=t["threshold"],
                    per_class=t["per_class"],
                    soft=t["soft"],
                    progress=False,
                ),  # fmt: skip
            )
            agreement[f"round{r}_seed{seed}"] = pseudo_label_agreement(
                _labels_by_id(os.path.join(work, f"round{r}", "pseudo"), "train"), withheld
            )
        control_dir = os.path.join(folder, "control")
        control = with_noise(
            _recipe(protocol, data_dir, weights, control_epochs(protocol), seed), t["noise"]
        )
        seconds[f"control_seed{seed}"] = _timed(
            os.path.join(timing, "control.json"),
            lambda c=control, m=control_dir: loop.train(c, m, progress=False),
        )
        models["teacher", seed] = teacher_dir
        models["control", seed] = control_dir
        for r in range(1, t["rounds"] + 1):
            models[f"student{r}", seed] = os.path.join(work, f"round{r}", "student")

    scored = {
        k: scoring.score_split(scoring.load_run(v), data_dir, "test") for k, v in models.items()
    }
    validation = {
        f"{a}_seed{s}": rounds.validation_figures(v, data_dir)["kappa"]
        for (a, s), v in models.items()
    }
    table = assemble(protocol, scored)
    labelled = counts["train"] + counts["validation"]
    summary = {
        "protocol": {"path": os.path.abspath(path), "sha256": digest},
        "preset": preset,
        "setting": {
            **d,
            "withhold_labels": withhold,
            "splits": counts,
            "labelled_share_of_non_test": labelled / (labelled + counts.get("unlabelled", 0)),
            "control_epochs": control_epochs(protocol),
            "test_patients": int(len(np.unique(table["patients"]))),
        },
        "validation_kappa": validation,
        "pseudo_labels": agreement,
        "seconds": seconds,
        "rows": table["rows"],
    }
    fileio.write_atomic(os.path.join(out, "results.json"), json.dumps(summary, indent=2))
    s = summary["setting"]
    print(
        f"\nprotocol sha256 {digest}\nsynthetic_dr {preset}, {d['num_images']} images at "
        f"{d['image_size']} px: graded {counts['train']} train + {counts['validation']} "
        f"validation ({100 * s['labelled_share_of_non_test']:.1f} % of the non-test images), "
        f"{counts.get('unlabelled', 0)} ungraded, test {counts['test']} ({s['test_patients']} "
        f"patients); seeds {t['seeds']}; * : significant at 0.05 after Holm\n"
    )
    print(protocols.markdown(table["rows"]))
    print()
    for k, v in validation.items():
        print(f"validation kappa {k}: {v:.3f}")
    for k, a in agreement.items():
        print(
            f"{k}: {a['images']} pseudo-labelled images from {a['of_unlabelled']} ungraded, "
            f"{100 * a['agreement']:.1f} % agree with the withheld grades (kappa {a['kappa']:.3f})"
        )
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))


if __name__ == "__main__":
    from effdr_tf import cli

    define_flags()
    app.run(cli.entry_point(main), flags_parser=cli.parse_flags_or_exit)
