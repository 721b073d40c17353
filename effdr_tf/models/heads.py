"""Output heads: what the classifier layer's outputs mean, and how each becomes class
probabilities.

Every head ends in the same dense layer, ``predictions``; only its width and its reading
differ. Everything downstream (validation, eval.py, the report, the exports, ``--images``) reads
class probabilities ``[N, K]`` made here, so a head is chosen in the config and nothing else
changes.

* ``softmax``: K logits, the thesis's head (cross-entropy, argmax).
* ``regression``: one output, the grade itself (MSE or SmoothL1 on the grade, as the top APTOS
  2019 solutions). Its class probabilities are a logistic of fixed scale
  (``REGRESSION_SCALE``) around the output, discretised at the grade boundaries k +/- 0.5 as an
  ordinal model would: P(grade >= k) = sigmoid((y - k + 0.5) / scale), the mass below 0.5 goes to
  grade 0 and the mass above K - 1.5 to grade K - 1. So the referable score is
  sigmoid((y - 1.5) / scale) and the expected grade the sum of the K - 1 sigmoids: both rise
  strictly with the output over the whole real line (kappa-fitted cut points and ROC curves are
  those of the output itself), and the logistic's tails keep the referable score below 1.0 up
  to y = 5.6 in float32 and 10.7 in float64. argmax is the output rounded to the nearest grade,
  except within ``REGRESSION_ARGMAX_SHIFT`` above 0.5 and below K - 1.5, where the open-ended
  bins of grades 0 and K - 1 hold more mass than their neighbour. The width is chosen, not
  learnt: ``CALIBRATION_NOTE``.
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
# Scale of the regression head's logistic, in grades: a prediction of exactly k gives an inner
# grade k tanh(0.25 / scale) = 76 % of its mass (the discretised Gaussian of width 0.5 this
# replaces gave 79 %), and the referable score keeps ranking outputs up to about 4 grades above
# the 1-2 boundary in float32 (the Gaussian's reached exactly 1.0 from 3.82 and fell from 3.5).
REGRESSION_SCALE = 0.25
# How far the argmax boundary between grades 0 and 1 (and, mirrored, K-2 and K-1) sits from
# 0.5: the root of sigmoid((1 - d) / scale) = 2 sigmoid(-d / scale).
REGRESSION_ARGMAX_SHIFT = 0.0093
CALIBRATION_NOTE = (
    "The regression head's class probabilities are a logistic of fixed scale "
    f"{REGRESSION_SCALE} grades around its output, chosen rather than learnt: its calibration "
    "figures (ECE, the reliability diagram, the confidences) measure that chosen width, not the "
    "model; its rankings (AUC, operating points, kappa at cut points) are the output's own."
)


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


def calibration_note(head: str) -> str | None:
    """What a head's calibration figures measure, where it is not the model (regression)."""
    return CALIBRATION_NOTE if check(head) == "regression" else None


def regression_exceedance(outputs, num_classes: int, dtype="float32"):
    """Regression head: P(grade >= k) for k = 1..K-1, [N, K-1], rising strictly with the
    output."""
    outputs = ops.cast(outputs, dtype)
    boundaries = ops.arange(num_classes - 1, dtype=dtype) + ops.cast(0.5, dtype)
    return ops.sigmoid((outputs[:, :1] - boundaries[None, :]) / ops.cast(REGRESSION_SCALE, dtype))


def exceedance(outputs):
    """CORN: P(y > k) for k = 0..K-2 from the K-1 conditional logits, [N, K-1]."""
    conditional = ops.sigmoid(ops.cast(outputs, "float32"))
    # An explicit running product (K is small) keeps the graph to multiplications, which every
    # converter supports.
    columns = [conditional[:, 0]]
    for j in range(1, conditional.shape[-1]):
        columns.append(columns[-1] * conditional[:, j])
    return ops.stack(columns, axis=-1)


def probabilities(outputs, head: str, num_classes: int, dtype="float32"):
    """Class probabilities [N, K] from the ``predictions`` layer's outputs.

    Args:
        outputs: the layer's outputs, [N, units].
        head: one of ``HEADS``.
        num_classes: K.
        dtype: of the result; float32 everywhere the model runs, float64 to study the
            regression head's tails.
    """
    outputs = ops.cast(outputs, dtype)
    head = check(head)
    if head == "softmax":
        return ops.softmax(outputs, axis=-1)
    if head == "ordinal":
        above = ops.cast(exceedance(outputs), dtype)
    else:
        above = regression_exceedance(outputs, num_classes, dtype)
    n = ops.shape(above)[0]
    ones = ops.ones((n, 1), dtype)
    zeros = ops.zeros((n, 1), dtype)
    # P(y = k) = P(y > k - 1) - P(y > k), with P(y > -1) = 1 and P(y > K - 1) = 0. Where
    # neighbouring exceedances are within a factor 2 (the saturated tail) the differences are
    # exact in floating point, so the referable sum P(2) + ... + P(K-1) is P(y >= 2) itself and
    # keeps its order.
    return ops.concatenate([ones, above], axis=-1) - ops.concatenate([above, zeros], axis=-1)


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
