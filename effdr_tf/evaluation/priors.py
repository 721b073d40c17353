"""Class probabilities under the training set's natural class shares.

A model trained on rebalanced data (``balance.target`` other than ``natural``, the thesis's
BalancedSampler among them) or with ``train.class_weights`` in its loss learns posteriors under
the prior it was shown, not under the data's: it over-calls the rare grades, and its
confidences, expected grade and referable score are those of a population that does not exist.
Saerens, Latinne & Decaestecker (2002), "Adjusting the outputs of a classifier to new a priori
probabilities: a simple procedure", Neural Computation 14(1):21-41, eq. 2.4: with the class-
conditional densities unchanged,

    p'(k | x) = p(k | x) pi'(k) / pi(k) / sum_j p(j | x) pi'(j) / pi(j),

here with pi the shares the run trained under and pi' the training split's natural shares
(both read from the manifest of the run's own ``data.data_dir``). The same constant ratio is
logit adjustment (Menon et al. 2021, "Long-tail learning via logit adjustment", ICLR) written
on probabilities.

The shares the run trained under (``training_shares``):

* the sampler's target shares, as ``pipeline.input.make_dataset`` computes them from the same
  class counts;
* with a moving target (``balance.final_target``), the shares in force when training ended:
  the schedule interpolates linearly over ``balance.transition_examples`` emitted examples, and
  the run emits ``epochs x steps_per_epoch x batch_size`` (one input pipeline; several hosts
  each move through the schedule more slowly). The end, not the run's average, because the
  classifier's bias follows the shares of the batches it saw last; the average is recorded
  beside it;
* times ``train.class_weights`` where the loss was weighted: a weighted cross-entropy is
  minimised by the posterior under the weighted prior.

A regression head's probabilities are not posteriors a model learnt (``heads.CALIBRATION_NOTE``);
the correction applies to the probabilities the head makes, the same as for the others, so that
every head's expected grade and referable score are read under the same prior.
"""

from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf

from effdr_tf.errors import EffdrError
from effdr_tf.pipeline import balance

MANIFEST = "manifest.json"
METHOD = (
    "prior shift (Saerens, Latinne & Decaestecker 2002): p(k|x) x natural share / training "
    "share, renormalised"
)


def _shares(counts, target, config) -> np.ndarray:
    """``pipeline.input.make_dataset``'s shares for ``target`` on ``counts``."""
    if target == "explicit":
        if not config.balance.get("shares"):
            raise EffdrError("balance.target=explicit needs balance.shares")
        target = list(config.balance.shares)
    return balance.target_shares(counts, target, config.balance.get("multipliers"))


def _examples_per_stream(config, train_count: int) -> int:
    """Examples one input pipeline emits over the run (one pipeline, as on a single host)."""
    batch = int(config.data.batch_size)
    steps = int(config.train.get("steps_per_epoch") or 0) or train_count // max(batch, 1)
    return int(config.train.epochs) * steps * batch


def training_shares(config, counts) -> dict:
    """The class shares a run trained under, and how they were worked out.

    Args:
        config: the run's resolved config (its ``config.json``).
        counts: the training split's examples per class.

    Returns:
        dict: ``shares`` (the shares in force at the end of training, class weights applied),
        ``start`` and ``end`` (the sampler's schedule; ``end`` None for a fixed target),
        ``examples`` (emitted per input pipeline over the run), ``average`` (the schedule's
        mean over those examples, class weights applied).
    """
    counts = np.asarray(counts, np.float64)
    start = _shares(counts, config.balance.target, config)
    final = config.balance.get("final_target")
    end = _shares(counts, final, config) if final else None
    transition = int(config.balance.get("transition_examples") or 0)
    examples = _examples_per_stream(config, int(counts.sum()))
    if end is None or transition <= 0 or np.allclose(start, end):
        at_end = average = start
    else:
        reached = min(examples / transition, 1.0)
        at_end = start + reached * (end - start)
        # Mean of the linear ramp over the part of it the run covered, then the end shares for
        # the examples after it.
        ramp = start + 0.5 * reached * (end - start)
        covered = min(examples, transition) / max(examples, 1)
        average = covered * ramp + (1.0 - covered) * end
    weights = config.train.get("class_weights")
    if weights:
        weights = np.asarray(weights, np.float64)
        if weights.shape != counts.shape:
            raise EffdrError(f"train.class_weights: need {len(counts)} values, got {list(weights)}")
        at_end = at_end * weights / np.sum(at_end * weights)
        average = average * weights / np.sum(average * weights)
    return {
        "shares": at_end,
        "start": start,
        "end": end,
        "examples": examples,
        "average": average,
    }


def rebalanced(config) -> bool:
    """Whether a run's training shares can differ from its data's: a sampler target other than
    ``natural`` (fixed or final) or class weights in the loss."""
    balance_config = config.get("balance") or {}
    targets = [balance_config.get("target", "natural"), balance_config.get("final_target")]
    moved = any(t is not None and not (isinstance(t, str) and t == "natural") for t in targets)
    return moved or bool(config.get("train", {}).get("class_weights"))


def correction(config, num_classes: int, config_path: str = "config.json") -> dict | None:
    """The prior correction a run needs, or None when it trained under its data's own shares.

    Args:
        config: the run's resolved config (``config.json``); its ``data.data_dir`` is read.
        num_classes: the classes the run's model grades.
        config_path: where ``config`` came from, for the error when it names no data.

    Returns:
        None, or a JSON-ready dict: ``from`` (training shares), ``to`` (natural shares),
        ``ratio`` (``to / from``, the factor on each class probability before renormalising),
        ``source`` (the manifest read), ``target``, ``final_target``, ``examples``,
        ``average_shares`` and ``method``.

    Raises:
        EffdrError: the manifest cannot be read or does not fit the run, or a class the data has
            was given no share in training (its probability cannot be rescaled from zero).
    """
    if not rebalanced(config):
        return None
    data_dir = config.data.get("data_dir") or ""
    path = os.path.join(data_dir, MANIFEST)
    fix = "pass --noprior_correction to score the run without it"
    if not data_dir:
        raise EffdrError(
            f"{config_path}: names no data.data_dir, so the training shares are unknown; {fix}"
        )
    if not tf.io.gfile.exists(path):
        raise EffdrError(
            f"{path}: not found; the run trained on rebalanced classes and its probabilities "
            f"are corrected to the class shares of its training split, read from there; {fix}"
        )
    try:
        with tf.io.gfile.GFile(path) as f:
            manifest = json.load(f)
    except (OSError, tf.errors.OpError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise EffdrError(
            f"{path}: cannot read it for the prior correction ({reason}); {fix}"
        ) from e
    try:
        class_counts = manifest["splits"]["train"]["class_counts"]
        k = int(manifest["num_classes"])
    except (KeyError, TypeError, ValueError) as e:
        raise EffdrError(
            f"{path}: no splits.train.class_counts and num_classes for the prior correction "
            f"({e!r}); {fix}"
        ) from e
    if k != num_classes:
        raise EffdrError(
            f"{path}: {k} classes, but the run grades {num_classes}; the prior correction needs "
            f"the run's own training data; {fix}"
        )
    counts = np.array([float(class_counts.get(str(c), 0)) for c in range(k)])
    if counts.sum() <= 0:
        raise EffdrError(f"{path}: the train split has no examples; {fix}")
    natural = counts / counts.sum()
    trained = training_shares(config, counts)
    shares = trained["shares"]
    unseen = [c for c in range(k) if natural[c] > 0 and shares[c] <= 0]
    if unseen:
        raise EffdrError(
            f"{path}: training gave grade(s) {unseen} no share although the data has them; "
            f"their probabilities cannot be rescaled from zero; {fix}"
        )
    if np.allclose(shares, natural, rtol=1e-6, atol=1e-9):
        return None
    # A grade the data lacks keeps its (zero-share) probability as it is.
    ratio = np.where(shares > 0, natural / np.where(shares > 0, shares, 1.0), 1.0)
    return {
        "from": [float(v) for v in shares],
        "to": [float(v) for v in natural],
        "ratio": [float(v) for v in ratio],
        "source": path,
        "target": _plain(config.balance.get("target")),
        "final_target": _plain(config.balance.get("final_target")),
        "class_weights": _plain(config.train.get("class_weights")),
        "examples": int(trained["examples"]),
        "average_shares": [float(v) for v in trained["average"]],
        "method": METHOD,
    }


def _plain(value):
    if value is None or isinstance(value, str | int | float):
        return value
    return [float(v) for v in value]


def apply(probabilities, prior: dict | None):
    """``probabilities`` [N, K] under ``prior['to']``: times ``prior['ratio']``, renormalised.

    Keras ops, so it runs on NumPy arrays, tensors and inside ``tf.function``; None returns the
    probabilities unchanged.
    """
    if not prior:
        return probabilities
    from keras import ops

    probabilities = ops.convert_to_tensor(probabilities)
    ratio = ops.cast(ops.convert_to_tensor(np.asarray(prior["ratio"])), probabilities.dtype)
    scaled = probabilities * ratio[None, :]
    return scaled / ops.sum(scaled, axis=-1, keepdims=True)


def describe(prior: dict | None) -> str:
    """One line for a report's provenance."""
    if not prior:
        return "none: the run trained under its data's own class shares"
    share = ", ".join(f"{a:.3f}->{b:.3f}" for a, b in zip(prior["from"], prior["to"], strict=True))
    return (
        f"class probabilities moved from the training shares to the natural ones ({share}; "
        f"{prior['source']}), Saerens et al. 2002"
    )
