"""Output heads: what the classifier layer's outputs mean, and how each becomes class
probabilities.

Every head ends in the same dense layer, ``predictions``; only its width and its reading
differ. Everything downstream (validation, eval.py, the report, the exports, ``--images``) reads
class probabilities ``[N, K]`` made here, so a head is chosen in the config and nothing else
changes.

* ``softmax``: K logits, the thesis's head (cross-entropy, argmax).
* ``regression``: one output, the grade itself (MSE or SmoothL1 on the grade, as the top APTOS
  2019 solutions). Its class probabilities are a discretised Gaussian around the output
  (``REGRESSION_SIGMA``): they sum to one, argmax is the output rounded to the nearest grade, and
  both the expected grade and the referable score rise with the output, so kappa-fitted cut
  points and ROC curves are those of the output itself.
* ``ordinal``: K - 1 outputs, CORN (Shi, Cao & Raschka 2023, "Deep neural networks for rank-
  consistent ordinal regression based on conditional probabilities"): output j is the logit of
  P(y > j | y > j - 1). P(y > k) is the running product of the conditionals, so it falls with k
  for any weights: the K - 1 cumulative probabilities are rank consistent by construction and
  the class probabilities are non-negative and sum to one.

Keras ops only, so the functions run on NumPy arrays, TensorFlow tensors and inside graphs.
"""

from __future__ import annotations

from keras import ops

HEADS = ("softmax", "regression", "ordinal")
REGRESSION_LOSSES = ("mse", "smooth_l1")
# Width of the regression head's discretised Gaussian, in grades: narrow enough that a
# prediction of exactly k gives grade k about 86 % of its mass (with K=5), wide enough that the
# referable score keeps ranking outputs far from the 1-2 boundary in float32.
REGRESSION_SIGMA = 0.5


def kernel_initializer(head: str) -> dict | None:
    """The classifier's initialiser: the reference's for softmax; over fan-in for the others.

    The reference scales by fan-out, which for one output (regression) draws weights in
    [-1, 1] over 1,280 features: first outputs tens of grades away from any label, and a
    squared error that swamps the first epochs (measured: validation kappa 0.03 after two demo
    epochs on the hard synthetic data). Over fan-in the first outputs are about one grade wide.
    """
    if check(head) == "softmax":
        return None
    return {
        "class_name": "VarianceScaling",
        "config": {"scale": 1.0 / 3.0, "mode": "fan_in", "distribution": "uniform"},
    }


def check(head: str) -> str:
    if head not in HEADS:
        raise ValueError(f"head {head!r}: choose one of {', '.join(HEADS)}")
    return head


def output_units(head: str, num_classes: int) -> int:
    """Width of the ``predictions`` layer for ``num_classes`` grades."""
    return {"softmax": num_classes, "regression": 1, "ordinal": num_classes - 1}[check(head)]


def num_classes_from_units(head: str, units: int) -> int | None:
    """The number of grades a head of ``units`` outputs serves; None where the width cannot
    tell (regression)."""
    return {"softmax": units, "regression": None, "ordinal": units + 1}[check(head)]


def exceedance(outputs):
    """CORN: P(y > k) for k = 0..K-2 from the K-1 conditional logits, [N, K-1]."""
    conditional = ops.sigmoid(ops.cast(outputs, "float32"))
    # An explicit running product (K is small) keeps the graph to multiplications, which every
    # converter supports.
    columns = [conditional[:, 0]]
    for j in range(1, conditional.shape[-1]):
        columns.append(columns[-1] * conditional[:, j])
    return ops.stack(columns, axis=-1)


def probabilities(outputs, head: str, num_classes: int):
    """Class probabilities [N, K] (float32) from the ``predictions`` layer's outputs."""
    outputs = ops.cast(outputs, "float32")
    head = check(head)
    if head == "softmax":
        return ops.softmax(outputs, axis=-1)
    if head == "ordinal":
        above = exceedance(outputs)
        n = ops.shape(above)[0]
        ones = ops.ones((n, 1), "float32")
        zeros = ops.zeros((n, 1), "float32")
        # P(y = k) = P(y > k - 1) - P(y > k), with P(y > -1) = 1 and P(y > K - 1) = 0.
        return ops.concatenate([ones, above], axis=-1) - ops.concatenate([above, zeros], axis=-1)
    grades = ops.arange(num_classes, dtype="float32")
    distance = outputs[:, :1] - grades[None, :]
    return ops.softmax(-ops.square(distance) / (2.0 * REGRESSION_SIGMA**2), axis=-1)


def per_example_loss(labels, outputs, head: str, num_classes: int, *, regression_loss="mse"):
    """The loss of each example (float32 [N]) for integer ``labels``, before any averaging.

    softmax: cross-entropy (the caller applies label smoothing); regression: squared error, or
    SmoothL1 (Huber with delta 1), on the grade; ordinal: CORN's negative log-likelihood, the
    sum of the binary cross-entropies of the conditional tasks the example takes part in (task
    j for the examples with y >= j, target y > j).
    """
    outputs = ops.cast(outputs, "float32")
    head = check(head)
    if head == "softmax":
        raise ValueError("the softmax head's loss is the training step's cross-entropy")
    if head == "regression":
        error = outputs[:, 0] - ops.cast(labels, "float32")
        if regression_loss == "mse":
            return ops.square(error)
        if regression_loss == "smooth_l1":
            a = ops.abs(error)
            return ops.where(a < 1.0, 0.5 * ops.square(error), a - 0.5)
        raise ValueError(
            f"regression loss {regression_loss!r}: choose one of {', '.join(REGRESSION_LOSSES)}"
        )
    labels = ops.cast(labels, "int32")[:, None]
    tasks = ops.arange(num_classes - 1, dtype="int32")[None, :]
    takes_part = ops.cast(labels >= tasks, "float32")
    target = ops.cast(labels > tasks, "float32")
    # Binary cross-entropy with logits, stable for large |z|: max(z, 0) - z t + log(1 + e^-|z|).
    bce = ops.relu(outputs) - outputs * target + ops.log1p(ops.exp(-ops.abs(outputs)))
    return ops.sum(bce * takes_part, axis=-1)
