"""Benchmark protocols and the statistics of their comparison tables.

A protocol is a JSON file under ``benchmarks/protocols/``, written before any test figure is
computed: the data (preset, sizes), the seeds, every arm's settings, the table's rows and
comparisons, the primary endpoint and the multiplicity correction. A benchmark loads it, prints
the SHA-256 of its bytes (as ``sha256sum`` prints it) at the start and in its results, and
refuses command-line settings that contradict it: another protocol is another file, passed
with ``--protocol=FILE``.

Statistics (NumPy only):

- ``hierarchical_bootstrap``: each round draws training seeds with replacement, then test
  patients with replacement (both eyes together); a difference between two arms is paired by
  seed index and by patient. With one seed (or seeds that agree) it is the patient bootstrap.
- ``bootstrap_p``: the two-sided bootstrap p-value of a difference, twice the smaller share of
  rounds on either side of zero (at most 1).
- ``holm``: Holm's step-down adjustment (Holm 1979, Scandinavian Journal of Statistics 6(2):
  65-70), which controls the family-wise error rate over the table's comparisons.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from effdr_tf.errors import EffdrError

FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "protocols")


def define_common_flags(benchmark: str, out: str) -> None:
    """The flags every protocol benchmark takes: the protocol, the preset, the work folder, and
    the data sizes the protocol fixes (accepted only when they agree with it)."""
    from absl import flags

    flags.DEFINE_string("protocol", None, f"Protocol file (default: protocols/{benchmark}.json).")
    flags.DEFINE_string("preset", None, "One of the protocol's presets (default: its first).")
    flags.DEFINE_string("out", out, "Work folder.")
    flags.DEFINE_integer("num_images", None, "Must equal the protocol's data.num_images.")
    flags.DEFINE_integer("image_size", None, "Must equal the protocol's data.image_size.")


def default_path(benchmark: str) -> str:
    return os.path.join(FOLDER, f"{benchmark}.json")


def load(path: str) -> tuple[dict, str]:
    """The protocol in ``path`` and the SHA-256 (hex) of its bytes."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise EffdrError(f"{path}: cannot read the protocol ({e.strerror})") from e
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EffdrError(f"{path}: not a JSON protocol ({e})") from e
    if not isinstance(value, dict) or "benchmark" not in value:
        raise EffdrError(f"{path}: a protocol is a JSON object with a 'benchmark' key")
    return value, hashlib.sha256(raw).hexdigest()


def expect(protocol: dict, path: str, benchmark: str) -> None:
    """Refuses a protocol written for another benchmark."""
    if protocol.get("benchmark") != benchmark:
        raise EffdrError(
            f"{path}: a protocol for {protocol.get('benchmark')!r}, not for {benchmark!r}"
        )


def check_overrides(protocol: dict, path: str, given: dict) -> None:
    """Refuses flags that contradict the protocol.

    Args:
        protocol: the loaded protocol.
        path: its file, named in the error.
        given: flag name -> (protocol key path as a tuple, value given on the command line);
            a value of None means the flag was not given.
    """
    for flag, (keys, value) in given.items():
        if value is None:
            continue
        held = protocol
        for key in keys:
            held = held[key]
        if value != held:
            raise EffdrError(
                f"{path}: --{flag}={value} contradicts the protocol ({'.'.join(keys)} = "
                f"{held}); write another protocol file and pass --protocol=FILE"
            )


def choose_preset(protocol: dict, path: str, preset: str | None) -> str:
    """The preset to run: one the protocol lists (its first when none is given), and one that
    the installed synthetic_dr knows."""
    from effdr_tf.data import synthetic

    listed = list(protocol["data"]["presets"])
    preset = preset or listed[0]
    if preset not in listed:
        raise EffdrError(
            f"{path}: --preset={preset} is not in the protocol's presets ({', '.join(listed)})"
        )
    if preset not in synthetic.PRESETS:
        raise EffdrError(
            f"{path}: synthetic preset {preset!r} does not exist in this effdr_tf "
            f"(known: {', '.join(synthetic.PRESETS)})"
        )
    return preset


def holm(pvalues) -> np.ndarray:
    """Holm-adjusted p-values, in the order given.

    Sorted ascending, the i-th smallest (i from 0) becomes max over j <= i of
    min(1, (m - j) p_(j)); a comparison is significant at level a when its adjusted value is at
    most a.
    """
    p = np.asarray(pvalues, np.float64)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.maximum.accumulate(adjusted)
    out = np.empty(m)
    out[order] = adjusted
    return out


def bootstrap_p(differences) -> float:
    """Two-sided bootstrap p-value of a difference being zero: twice the smaller share of
    rounds at or below zero and at or above zero, at most 1."""
    d = np.asarray(differences, np.float64)
    return float(min(1.0, 2 * min(np.mean(d <= 0), np.mean(d >= 0))))


def weighted_kappa(labels, grades, weights, num_classes: int) -> float:
    """Quadratic weighted kappa of a resample given as a count per image."""
    labels = np.asarray(labels, np.int64)
    grades = np.asarray(grades, np.int64)
    confusion = np.bincount(
        labels * num_classes + grades, weights=weights, minlength=num_classes * num_classes
    ).reshape(num_classes, num_classes)
    total = confusion.sum()
    if total == 0:
        return 0.0
    i = np.arange(num_classes)
    w = (i[:, None] - i[None, :]) ** 2 / max(1, (num_classes - 1) ** 2)
    expected = np.outer(confusion.sum(1), confusion.sum(0)) / total
    denominator = (w * expected).sum()
    return float(1.0 - (w * confusion).sum() / denominator) if denominator else 0.0


def weighted_auc(positive, scores, weights) -> float:
    """ROC AUC of ``scores`` for ``positive`` with a count per image (ties count a half)."""
    positive = np.asarray(positive, bool)
    scores = np.asarray(scores, np.float64)
    weights = np.asarray(weights, np.float64)
    wp, wn = weights * positive, weights * ~positive
    if wp.sum() == 0 or wn.sum() == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    s, wp, wn = scores[order], wp[order], wn[order]
    _, start = np.unique(s, return_index=True)
    tie_p = np.add.reduceat(wp, start)
    tie_n = np.add.reduceat(wn, start)
    below_n = np.concatenate([[0.0], np.cumsum(tie_n)[:-1]])
    return float((tie_p * (below_n + 0.5 * tie_n)).sum() / (wp.sum() * wn.sum()))


def patient_weights(patients, n: int, rounds: int, seed: int) -> np.ndarray:
    """[rounds, n] counts of each image in each patient resample (both eyes together; an image
    without a patient id is its own cluster), drawn as eval.py draws them
    (``clinical.ClusterBootstrap``)."""
    from effdr_tf.evaluation import clinical

    boot = clinical.ClusterBootstrap(patients, n, rounds=rounds, seed=seed)
    return boot.counts[:, boot.cluster]


def seed_draws(num_seeds: int, rounds: int, seed: int) -> np.ndarray:
    """[rounds, num_seeds] seed indices drawn with replacement."""
    return np.random.default_rng([seed, 2]).integers(0, num_seeds, (rounds, num_seeds))


def hierarchical_bootstrap(per_seed_figure, num_seeds, patients, rounds, seed=0):
    """Bootstrap distribution of the seed-mean of a per-seed figure.

    Args:
        per_seed_figure: f(seed index, weights [N]) -> float, the figure of one seed's test
            predictions on a resample (a difference between arms when they are compared).
        num_seeds: how many training seeds there are.
        patients: [N] patient ids of the test images.
        rounds: bootstrap rounds.
        seed: the resampling seed; the same seed gives the same resamples, so arms compared
            under it are paired by patient and by seed index.

    Returns:
        [rounds] values: per round, the mean over the drawn seeds of their figure on the drawn
        patients. The patient draws do not depend on ``num_seeds``, so with one seed (or seeds
        whose predictions agree) it is the patient-only bootstrap.
    """
    n = len(patients)
    weights = patient_weights(patients, n, rounds, seed)
    seeds = seed_draws(num_seeds, rounds, seed)
    out = np.empty(rounds)
    for r in range(rounds):
        figures = {s: per_seed_figure(s, weights[r]) for s in np.unique(seeds[r])}
        out[r] = np.mean([figures[s] for s in seeds[r]])
    return out


def interval(values, level: float = 0.95) -> list[float]:
    """The percentile interval of bootstrap values."""
    a = (1 - level) / 2
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return [float("nan"), float("nan")]
    return [float(np.quantile(v, a)), float(np.quantile(v, 1 - a))]


def compare(labels, patients, base, other, *, rounds, seed=0, num_classes=5, referable=2):
    """The paired hierarchical comparison of two arms on the same test images.

    Args:
        labels: [N] test grades.
        patients: [N] patient ids.
        base, other: per seed, (grades [N], probabilities [N, K]); both arms have the same
            number of seeds, paired by index.
        rounds: bootstrap rounds.

    Returns:
        Per figure (``kappa``, ``auc``): the seed-mean difference on the full test set, each
        seed's difference, the 95 % interval and the two-sided bootstrap p-value.
    """
    labels = np.asarray(labels)
    if len(base) != len(other):
        raise ValueError("arms compared must have the same number of seeds")
    positive = labels >= referable
    ones = np.ones(len(labels))

    def kappa_diff(s, w):
        return weighted_kappa(labels, other[s][0], w, num_classes) - weighted_kappa(
            labels, base[s][0], w, num_classes
        )

    def auc_diff(s, w):
        return weighted_auc(positive, other[s][1][:, referable:].sum(1), w) - weighted_auc(
            positive, base[s][1][:, referable:].sum(1), w
        )

    out = {}
    for name, fn in (("kappa", kappa_diff), ("auc", auc_diff)):
        per_seed = [fn(s, ones) for s in range(len(base))]
        values = hierarchical_bootstrap(fn, len(base), patients, rounds, seed)
        out[name] = {
            "difference": float(np.mean(per_seed)),
            "per_seed": [float(v) for v in per_seed],
            "interval_95": interval(values),
            "p": bootstrap_p(values[np.isfinite(values)]),
        }
    return out


def figures(labels, arm, *, num_classes=5, referable=2) -> dict:
    """Each seed's test kappa and referable AUC of one arm, and their means."""
    labels = np.asarray(labels)
    ones = np.ones(len(labels))
    kappas = [weighted_kappa(labels, g, ones, num_classes) for g, _ in arm]
    aucs = [weighted_auc(labels >= referable, p[:, referable:].sum(1), ones) for _, p in arm]
    return {
        "kappa": float(np.mean(kappas)),
        "kappa_per_seed": [float(v) for v in kappas],
        "auc": float(np.mean(aucs)),
        "auc_per_seed": [float(v) for v in aucs],
    }


def table(labels, patients, arms: dict, rows: list[dict], *, rounds: int, seed: int = 0):
    """The comparison table: every row's figures, its comparison with its reference row, and
    Holm-adjusted p-values over the rows' kappa comparisons.

    Args:
        arms: arm name -> per seed (grades, probabilities) on the test images; a row reads
            the arm named by its ``arm`` key, or by its name.
        rows: protocol rows, each with ``name``, ``versus`` (a row name, or null for a
            reference row) and optionally ``arm``.
    """
    arm_of = {row["name"]: arms[row.get("arm", row["name"])] for row in rows}
    out = []
    for row in rows:
        arm = arm_of[row["name"]]
        entry = {"name": row["name"], "versus": row.get("versus"), **figures(labels, arm)}
        if row.get("versus"):
            entry["comparison"] = compare(
                labels, patients, arm_of[row["versus"]], arm, rounds=rounds, seed=seed
            )
        out.append(entry)
    compared = [e for e in out if "comparison" in e]
    adjusted = holm([e["comparison"]["kappa"]["p"] for e in compared])
    for e, p in zip(compared, adjusted, strict=True):
        e["comparison"]["kappa"]["p_holm"] = float(p)
    return out


def markdown(entries: list[dict], level: float = 0.05) -> str:
    """The table as Markdown: per row, the seed mean and each seed's test kappa, the difference
    to its reference with the hierarchical 95 % interval, the raw and Holm-adjusted p-values,
    and the same for referable AUC (unadjusted: kappa is the primary endpoint)."""
    lines = [
        "| row | vs | test QWK (seeds) | Δ QWK (95 % CI) | p | p Holm | referable AUC | "
        "Δ AUC (95 % CI) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        seeds = ", ".join(f"{v:.3f}" for v in e["kappa_per_seed"])
        if "comparison" in e:
            k, a = e["comparison"]["kappa"], e["comparison"]["auc"]
            mark = " *" if k["p_holm"] <= level else ""
            dk = f"{k['difference']:+.3f} ({k['interval_95'][0]:+.3f}, {k['interval_95'][1]:+.3f})"
            da = f"{a['difference']:+.3f} ({a['interval_95'][0]:+.3f}, {a['interval_95'][1]:+.3f})"
            p, ph = f"{k['p']:.3f}", f"{k['p_holm']:.3f}{mark}"
        else:
            dk = da = p = ph = "-"
        lines.append(
            f"| {e['name']} | {e['versus'] or '-'} | {e['kappa']:.3f} ({seeds}) | {dk} | {p} | "
            f"{ph} | {e['auc']:.3f} | {da} |"
        )
    return "\n".join(lines)
