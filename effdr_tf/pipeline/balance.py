"""Class rebalancing from the manifest's class counts: per-class streams, sampled to a target.

The builder writes class-pure training shards, so each class is one stream that reads only its
own records; ``tf.data.Dataset.sample_from_datasets`` mixes the streams to the target shares.
Every record read is emitted (``rejection_resample`` reads about ten per emitted on EyePACS
shares with a uniform target), and no counting pass over the data is needed.

Targets (shares per class, normalised):

* ``natural``: the data's own shares (no rebalancing);
* ``uniform``: equal shares for every class that has examples;
* ``sqrt``: proportional to the square root of the counts;
* ``thesis_class_weights``: counts x the thesis class weights (0.272, 2.875, 1.327, 8.047,
  9.922), which are N / (5 n_c) on the EyePACS training counts, so uniform there;
* ``balanced_sampler``: the thesis BalancedSampler: per-sample weight = class weight N/(K n_c)
  x a per-class multiplier, i.e. shares proportional to the multipliers;
* a list of K numbers: explicit shares.

The target can move during training (start balanced, end natural): shares are interpolated
linearly over ``transition_examples`` emitted examples.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from effdr_tf.errors import EffdrError

# The thesis's class weights on Kaggle 2015 (trainLabels.csv counts): exactly N / (5 * n_c).
THESIS_CLASS_WEIGHTS = (0.272, 2.875, 1.327, 8.047, 9.922)
TARGETS = ("natural", "uniform", "sqrt", "thesis_class_weights", "balanced_sampler")


def target_shares(class_counts, target="natural", multipliers=None) -> np.ndarray:
    """Shares per class for ``target`` given the training counts; errors name the problem."""
    counts = np.asarray(class_counts, np.float64)
    k = len(counts)
    if isinstance(target, str):
        if target == "natural":
            shares = counts
        elif target == "uniform":
            shares = (counts > 0).astype(np.float64)
        elif target == "sqrt":
            shares = np.sqrt(counts)
        elif target == "thesis_class_weights":
            if k != len(THESIS_CLASS_WEIGHTS):
                raise EffdrError(f"balance.target=thesis_class_weights needs 5 classes, not {k}")
            shares = counts * np.asarray(THESIS_CLASS_WEIGHTS)
        elif target == "balanced_sampler":
            m = np.ones(k) if multipliers is None else np.asarray(multipliers, np.float64)
            if m.shape != (k,):
                raise EffdrError(f"balance.multipliers: need {k} values, got {list(m)}")
            weights = np.where(counts > 0, counts.sum() / (k * np.maximum(counts, 1)), 0.0)
            shares = counts * weights * m
        else:
            raise EffdrError(f"balance.target={target!r}: choose one of {', '.join(TARGETS)}")
    else:
        shares = np.asarray(target, np.float64)
        if shares.shape != (k,) or (shares < 0).any():
            raise EffdrError(f"balance.target: need {k} non-negative shares, got {list(target)}")
    empty = [c for c in range(k) if shares[c] > 0 and counts[c] == 0]
    if empty:
        raise EffdrError(
            f"balance.target gives class(es) {empty} a share but the training split has no "
            "examples of them"
        )
    if shares.sum() <= 0:
        raise EffdrError("balance.target: all shares are zero")
    return shares / shares.sum()


def schedule(start: np.ndarray, end: np.ndarray | None, transition_examples: int, offset: int = 0):
    """Shares for every emitted example: a constant, or a dataset moving from start to end.

    ``offset``: examples this stream emitted before (a resumed run), so the transition goes on
    from there instead of restarting at ``start``.
    """
    if end is None or transition_examples <= 0 or np.allclose(start, end):
        return start.astype(np.float32).tolist()
    if offset >= transition_examples:
        return end.astype(np.float32).tolist()
    start_t = tf.constant(start, tf.float32)
    end_t = tf.constant(end, tf.float32)

    def shares_at(i):
        t = tf.minimum(tf.cast(i, tf.float32) / float(transition_examples), 1.0)
        return start_t + t * (end_t - start_t)

    return tf.data.Dataset.counter(start=int(offset)).map(shares_at)


def mix(class_streams: dict[int, tf.data.Dataset], shares, seed: int | None):
    """Samples from infinite per-class streams with the given shares (list or dataset).

    Classes whose share is zero throughout are left out, so their streams are never read.
    """
    if isinstance(shares, tf.data.Dataset):
        classes = sorted(class_streams)
        weights = shares.map(lambda w: tf.gather(w, classes))
    else:
        classes = [c for c in sorted(class_streams) if shares[c] > 0]
        weights = [shares[c] for c in classes]
    streams = [class_streams[c] for c in classes]
    if len(streams) == 1:
        return streams[0]
    return tf.data.Dataset.sample_from_datasets(
        streams, weights=weights, seed=seed, stop_on_empty_dataset=True
    )


def check_single_correction(balance_target, class_weights) -> None:
    """Rebalanced sampling and class weights in the loss correct twice."""
    rebalanced = not (isinstance(balance_target, str) and balance_target == "natural")
    if rebalanced and class_weights:
        raise EffdrError(
            "balance.target rebalances the sampling and train.class_weights reweights the loss: "
            "that corrects the class imbalance twice; set one of them (or "
            "train.allow_double_correction=True)"
        )
