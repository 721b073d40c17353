"""Checks on two logical CPU devices, run in a fresh process by test_distributed.py (the devices
must be configured before TensorFlow starts). Prints one JSON line of measurements.

    python tests/two_replicas.py DATA_DIR OUT_DIR CHECK [CHECK ...]

CHECKs:
  overflow     mixed_float16 on two replicas: an overflow in replica 1's gradients only (with
               TF_CONFIG set: MultiWorkerMirroredStrategy, replica 1 being worker 1).
  equivalence  mixed_float16, EMA: 2 replicas vs 1 replica on the same global batches.
  equivalence32  the same in float32.
  jit          jit_compile=True on 2 CPU replicas (refused with one line).
  heads        equivalence (mixed_float16) for the regression and ordinal heads, and for
               softmax on soft targets (a self-training student).
  masks        dropout and stochastic depth: per-replica masks, reproducible, resumable.
  decisions    injected per-worker validation scores: the chief's decisions everywhere;
               per-replica batch-norm statistics averaged before validation and export.
  accumulation float16, 2 replicas x 4 accumulated parts against one device's whole batch.
"""

import hashlib
import json
import os
import sys
import time

import numpy as np
import tensorflow as tf

MULTI_WORKER = "TF_CONFIG" in os.environ  # two localhost workers, one CPU replica each
if not MULTI_WORKER:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402

sys.path[:0] = [".", "tests"]
import tiny_config  # noqa: E402

from effdr_tf.errors import EffdrError  # noqa: E402
from effdr_tf.training import loop  # noqa: E402

DATA_DIR, OUT_DIR, *CHECKS = sys.argv[1:]
BATCH = 16


def make_config(**train):
    config = tiny_config.get_config()
    config.data.data_dir = DATA_DIR
    config.data.batch_size = BATCH
    config.model.dropout_rate = 0.0
    config.model.drop_connect_rate = 0.0
    config.train.mixed_precision = "mixed_float16"
    config.train.weight_decay = 1e-4
    config.train.ema_decay = 0.9
    config.train.jit_compile = False
    for key, value in train.items():
        config.train[key] = value
    return config


def fixed_batches(strategy, steps, soft=False):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (steps * BATCH, 32, 32, 3)).astype("float32")
    labels = rng.integers(0, 5, steps * BATCH).astype("int32")
    if soft:  # a student's targets: teacher probabilities
        labels = rng.dirichlet(np.ones(5), steps * BATCH).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(BATCH)
    return iter(strategy.experimental_distribute_dataset(ds))


def trainer_for(strategy, name, config=None, weights=None):
    trainer = loop.Trainer(config or make_config(), f"{OUT_DIR}/{name}", strategy, progress=False)
    if weights is not None:
        trainer.model.set_weights(weights)
        if trainer.ema is not None:
            for average, w in zip(trainer.ema.averages, weights, strict=True):
                average.assign(w)
    trainer._refresh_trainability(0)
    return trainer


def per_replica(variables):
    """Every replica's copy of every variable."""
    return [_local(var) for var in variables]


def _local(var):
    var = var.value if isinstance(var, keras.Variable) else var
    values = getattr(var, "values", None)
    return [x.numpy() for x in values] if values is not None else [var.numpy()]


_STRATEGIES = {}


def two_replicas():
    """One strategy per process, shared by the checks: a second one would hand out collective
    instance keys that clash with the first's, which fails once the models' shapes differ."""
    if "two" not in _STRATEGIES:
        _STRATEGIES["two"] = (
            tf.distribute.MultiWorkerMirroredStrategy()
            if MULTI_WORKER
            else tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        )
    return _STRATEGIES["two"]


def check_overflow(out):
    strategy = two_replicas()
    assert strategy.num_replicas_in_sync == 2
    trainer = trainer_for(strategy, "overflow")
    inject = tf.Variable(False, trainable=False)  # outside the scope: one copy
    original = trainer.replica_step.loss_and_gradients

    def poisoned(images, labels):
        loss, reg, logits, grads = original(images, labels)
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        bad = tf.logical_and(inject, tf.equal(replica, 1))
        grads = [tf.where(bad, g * np.inf, g) if i == 0 else g for i, g in enumerate(grads)]
        return loss, reg, logits, grads

    trainer.replica_step.loss_and_gradients = poisoned
    trainer._train_fn = trainer._make_train_fn()
    # A scale these random-pixel batches never overflow at (2**15, the start, overflows twice),
    # so that the injected overflow is the only one.
    trainer.loss_scale.scale.assign(256.0)
    trainer.iterator = fixed_batches(strategy, 3)

    def state():
        return {
            "weights": per_replica(trainer.model.trainable_variables),
            "slots": per_replica(trainer.optimizer.variables),
            "ema": per_replica(trainer.ema.averages),
            "scale": per_replica([trainer.loss_scale.scale])[0],
        }

    def same(a, b):
        return all(
            np.array_equal(x, y)
            for xs, ys in zip(a, b, strict=True)
            for x, y in zip(xs, ys, strict=True)
        )

    first = trainer._train_fn(trainer.iterator, tf.constant(1))
    before = state()
    inject.assign(True)
    bad = trainer._train_fn(trainer.iterator, tf.constant(1))
    after = state()
    inject.assign(False)
    trainer._train_fn(trainer.iterator, tf.constant(1))
    recovered = state()
    out["overflow"] = {
        "first_step_skipped": int(first["skipped"]),
        "bad_step_skipped": int(bad["skipped"]),
        "weights_unchanged": same(before["weights"], after["weights"]),
        "slots_unchanged": same(before["slots"], after["slots"]),
        "ema_unchanged": same(before["ema"], after["ema"]),
        "scale_before": [float(s) for s in before["scale"]],
        "scale_after": [float(s) for s in after["scale"]],
        "scale_recovered": [float(s) for s in recovered["scale"]],
        "next_step_trains": not same(after["weights"], recovered["weights"]),
        # Every copy of the weights on this process, and a digest to compare across workers.
        "replicas_agree": all(
            np.array_equal(copies[0], other)
            for copies in recovered["weights"]
            for other in copies[1:]
        ),
        "local_copies": len(recovered["weights"][0]),
        "digest": hashlib.sha256(
            b"".join(copies[0].tobytes() for copies in recovered["weights"])
        ).hexdigest(),
        "step": int(trainer.step.numpy()),
        "iterations": int(trainer.optimizer.iterations.numpy()),
    }


def check_equivalence(
    out,
    steps=4,
    policy="mixed_float16",
    head="softmax",
    lr=0.05,
    scale=None,
    soft=False,
    accumulation=1,
    freeze_bn=False,
):
    # SGD: the update is linear in the gradient, so update differences measure gradient
    # differences (Adam's first steps are about lr * sign(g), which turns float16 noise in
    # near-zero gradients into whole-lr differences).
    config = make_config(
        optimizer="sgd", learning_rate=lr, mixed_precision=policy, freeze_bn=freeze_bn
    )
    config.model.head = head
    name = f"{policy}_{head}{soft}{accumulation}"
    one = trainer_for(tf.distribute.get_strategy(), f"one_{name}", config=config)
    start = one.model.get_weights()
    config = config.copy_and_resolve_references()
    config.train.accumulation_steps = accumulation
    two = trainer_for(two_replicas(), f"two_{name}", config=config, weights=start)
    results = {}
    for name, trainer in (("one", one), ("two", two)):
        if scale is not None:
            trainer.loss_scale.scale.assign(scale)
        trainer.iterator = fixed_batches(trainer.strategy, steps, soft)
        t0 = time.perf_counter()
        losses, skipped = [], 0
        for _ in range(steps):
            figures = trainer._train_fn(trainer.iterator, tf.constant(1))
            losses.append(float(figures["loss"]))
            skipped += int(figures["skipped"])
        print(name, "seconds", time.perf_counter() - t0, file=sys.stderr)
        trainable = {id(v) for v in trainer.model.trainable_variables}
        results[name] = {
            "losses": losses,
            "weights": [
                np.array(v.numpy(), np.float64) for v in trainer.model.weights if id(v) in trainable
            ],
            "ema": [np.array(a.numpy(), np.float64) for a in trainer.ema.averages],
            "skipped": skipped,
        }
    first = [np.array(w, np.float64) for w in start]

    def relative(key):
        a = np.concatenate([x.ravel() for x in results["one"][key]])
        b = np.concatenate([x.ravel() for x in results["two"][key]])
        return float(np.linalg.norm(a - b) / np.linalg.norm(a))

    trainable = [w.path for w in one.model.trainable_variables]
    by_path = dict(zip([w.path for w in one.model.weights], first, strict=True))
    moved = np.concatenate(
        [
            (w - by_path[p]).ravel()
            for w, p in zip(results["one"]["weights"], trainable, strict=True)
        ]
    )
    difference = np.concatenate(
        [
            (a - b).ravel()
            for a, b in zip(results["one"]["weights"], results["two"]["weights"], strict=True)
        ]
    )
    ema_start = np.concatenate([w.ravel() for w in first])
    ema_one = np.concatenate([x.ravel() for x in results["one"]["ema"]])
    ema_two = np.concatenate([x.ravel() for x in results["two"]["ema"]])
    key = "equivalence" if policy == "mixed_float16" else "equivalence32"
    if accumulation > 1:
        key = "accumulation"
    out[key + ("" if head == "softmax" else f"_{head}") + ("_soft" if soft else "")] = {
        "ema_update_relative": float(
            np.linalg.norm(ema_one - ema_two) / np.linalg.norm(ema_one - ema_start)
        ),
        "losses_one": results["one"]["losses"],
        "losses_two": results["two"]["losses"],
        "skipped": [results["one"]["skipped"], results["two"]["skipped"]],
        "weights_relative": relative("weights"),
        "update_relative": float(np.linalg.norm(difference) / np.linalg.norm(moved)),
        "ema_relative": relative("ema"),
        "policy": one.model.get_layer("top_conv").compute_dtype,
    }


def check_jit(out):
    strategy = two_replicas()
    try:
        trainer_for(strategy, "jit", config=make_config(jit_compile=True))
        out["jit"] = "accepted"
    except EffdrError as e:
        out["jit"] = str(e)


def _worker():
    return json.loads(os.environ["TF_CONFIG"])["task"]["index"] if MULTI_WORKER else 0


def check_masks(out):
    """Dropout and stochastic depth on: each replica draws its own masks; a second run of the
    seed draws the same; a run resumed from a checkpoint continues as an uninterrupted one."""
    strategy = two_replicas()
    config = make_config(mixed_precision="float32")
    config.model.dropout_rate = 0.5
    config.model.drop_connect_rate = 0.5
    x = tf.constant(np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)), tf.float32)

    def forward(trainer):
        def replica():
            return trainer.model(x, training=True)

        outputs = tf.function(strategy.run)(replica)
        return [v.numpy() for v in strategy.experimental_local_results(outputs)]

    first = trainer_for(strategy, "masks_a", config=config)
    first.restore()
    a1 = forward(first)
    first.checkpoints.save(0)
    # A barrier: the other worker restores the chief's checkpoint only once it is written.
    strategy.reduce("SUM", strategy.run(lambda: tf.constant(1.0)), axis=None)
    a2 = forward(first)
    again = trainer_for(strategy, "masks_b", config=config)
    again.restore()
    b1 = forward(again)
    resumed = trainer_for(strategy, "masks_a", config=config)
    resumed.restore()
    c2 = forward(resumed)
    digest = hashlib.sha256(b"".join(o.tobytes() for o in a1)).hexdigest()
    out["masks"] = {
        "local_replicas": len(a1),
        "replicas_differ": [not np.array_equal(a1[0], o) for o in a1[1:]],
        "steps_differ": not np.array_equal(a1[0], a2[0]),
        "same_seed_same_masks": all(np.array_equal(p, q) for p, q in zip(a1, b1, strict=True)),
        "resume_continues": all(np.array_equal(p, q) for p, q in zip(a2, c2, strict=True)),
        "digest": digest,
    }


def check_decisions(out):
    """Validation scores that differ between workers (injected): every worker takes the
    chief's plateau and best-checkpoint decisions. Batch-norm moving statistics that differ
    between replicas are replaced by their mean before validation and export."""
    strategy = two_replicas()
    config = make_config(mixed_precision="float32", schedule="plateau", plateau_patience=1)
    config.model.sync_batch_norm = False
    config.train.ema_decay = 0.0
    config.train.export = True
    trainer = trainer_for(strategy, "decisions", config=config)
    worker = _worker()
    # The chief's scores fall (a plateau each time); the other worker's rise.
    scores = [[0.5, 0.4, 0.3], [0.5, 0.6, 0.7]][worker]
    original = trainer.evaluate
    calls = []

    def evaluate(split):
        result = original(split)
        result["kappa"] = scores[len(calls)]
        calls.append(split)
        return result

    trainer.evaluate = evaluate
    mean = trainer.model.get_layer("stem_bn").moving_mean
    copies = mean.value.values
    for i, copy in enumerate(copies):
        copy.assign(tf.fill(copy.shape, float(worker * len(copies) + i + 1)))
    lr_scales, best = [], []
    for step in range(3):
        trainer._validate(step)
        lr_scales.append(float(trainer.schedule.scale.numpy()))
        best.append(float(trainer.best.numpy()))
    trainer.moving_statistics()
    trainer.export()
    exported = None
    if trainer.chief:
        model = keras.saving.load_model(f"{OUT_DIR}/decisions/export/model.keras")
        exported = float(model.get_layer("stem_bn").moving_mean.numpy().mean())
    out["decisions"] = {
        "worker": worker,
        "lr_scales": lr_scales,
        "best": best,
        "moving_mean": [float(c.numpy().mean()) for c in copies],
        "exported_moving_mean": exported,
        "replicas": strategy.num_replicas_in_sync,
    }


def check_accumulation(out):
    """float16 on two replicas, 4 accumulated parts of 2 images each against one device
    taking the whole global batch of 16 at once (batch norm frozen)."""
    check_equivalence(out, steps=2, scale=64.0, accumulation=4, freeze_bn=True)


CHECK_FUNCTIONS = {
    "masks": check_masks,
    "decisions": check_decisions,
    "accumulation": check_accumulation,
    "overflow": check_overflow,
    "equivalence": check_equivalence,
    "equivalence32": lambda out: check_equivalence(out, policy="float32"),
    "jit": check_jit,
    # A loss scale these heads' losses do not overflow at, so that every step trains, and
    # rates at which they do not diverge (squared error on unbounded outputs needs a small one).
    "heads": lambda out: [
        check_equivalence(out, steps=2, head=head, lr=lr, scale=64.0, soft=soft)
        for head, lr, soft in (
            ("regression", 1e-4, False),
            ("ordinal", 0.003, False),
            ("softmax", 0.01, True),
        )  # fmt: skip
    ],
}
results = {}
for check in CHECKS:
    started = time.perf_counter()
    CHECK_FUNCTIONS[check](results)
    keras.mixed_precision.set_global_policy("float32")
    print(check, "seconds", time.perf_counter() - started, file=sys.stderr)
print("RESULT " + json.dumps(results))
