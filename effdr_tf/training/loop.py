"""The training loop: a custom step under any tf.distribute strategy, resumable.

A custom loop rather than ``model.fit``: ``fit`` under MultiWorkerMirroredStrategy fails in
Keras 3 (keras-team/keras#20585), and the loop needs things ``fit`` keeps out of reach: an EMA
over batch-norm statistics with the warm-up ramp, the input position in checkpoints, stepwise
NaN guards and trainability that changes between epochs.

Layout of model_dir:

    config.json         the resolved config, written before step 0
    checkpoints/        model, optimizer, EMA, step, input position (resume point)
    best.weights.h5     the weights with the best validation metric (EMA weights if EMA is on)
    train/ eval/        TensorBoard
    log.csv             one row per epoch
    export/             model.keras and saved_model/ at the end
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from effdr_tf import constants, models
from effdr_tf.data import splits
from effdr_tf.errors import EffdrError
from effdr_tf.evaluation import metrics
from effdr_tf.models import heads
from effdr_tf.pipeline import balance
from effdr_tf.pipeline import input as pipeline
from effdr_tf.training import checkpointing, distribute, options, recipes, replica_state
from effdr_tf.training import step as step_lib
from effdr_tf.training.monitor import Monitor
from effdr_tf.training.validation import Validation

log = logging.getLogger(__name__)


class TrainingDivergedError(EffdrError):
    """The loss became NaN or infinite."""


# Fewer images per replica than this make per-replica batch statistics and the step's
# arithmetic intensity poor (a warning, not an error).
MIN_PER_REPLICA_BATCH = 4


@dataclasses.dataclass
class Setup:
    """Everything derived from the config before any model is built."""

    num_classes: int
    image_size: int
    global_batch: int
    steps_per_epoch: int
    total_steps: int
    train_count: int
    has_validation: bool


def check_config(config, strategy) -> Setup:
    """Every check that can fail before anything is written."""
    options.check(config)
    models.canonical_variant(config.variant)
    manifest = pipeline.load_manifest(config.data.data_dir)
    if "train" not in manifest["splits"]:
        raise EffdrError(f"{config.data.data_dir}: no train split in manifest.json")
    if not config.train.allow_double_correction:
        balance.check_single_correction(config.balance.target, config.train.class_weights)
    num_classes = int(config.model.num_classes or manifest["num_classes"])
    if num_classes < 2:
        raise EffdrError(f"{config.data.data_dir}: {num_classes} class; a grader needs 2 or more")
    # Recorded in config.json: a regression head's single output does not say how many grades
    # it reads.
    config.model.num_classes = num_classes
    if config.train.class_weights and len(config.train.class_weights) != num_classes:
        raise EffdrError(f"train.class_weights: need {num_classes} values")
    global_batch = int(config.data.batch_size)
    replicas = strategy.num_replicas_in_sync
    if global_batch % replicas:
        raise EffdrError(
            f"data.batch_size={global_batch} does not divide across {replicas} replicas"
        )
    parts = int(config.train.accumulation_steps)
    if global_batch % (replicas * parts):
        raise EffdrError(
            f"data.batch_size={global_batch} over {replicas} replica(s) does not divide into "
            f"train.accumulation_steps={parts} equal parts"
        )
    if global_batch // (replicas * parts) < MIN_PER_REPLICA_BATCH:
        log.warning(
            "data.batch_size=%d over %d replicas in %d part(s) gives each replica %d images a "
            "pass; batch norm statistics over fewer than %d images are noisy: raise the batch "
            "size (and the learning rate with it) or use fewer replicas or parts",
            global_batch, replicas, parts, global_batch // (replicas * parts),
            MIN_PER_REPLICA_BATCH,
        )  # fmt: skip
    train_count = int(manifest["splits"]["train"]["count"])
    selftrain = config.get("selftrain")
    if selftrain is not None and selftrain.pseudo_dir:
        pipeline.load_manifest(selftrain.pseudo_dir)  # a missing folder fails here, not later
        # An epoch still reads the labelled images once; the pseudo-labelled ones fill the
        # rest of each batch.
        train_count = int(round(train_count / (1.0 - selftrain.pseudo_fraction)))
    spe = recipes.steps_per_epoch(train_count, global_batch, config.train.steps_per_epoch)
    split = config.train.validation_split
    warning = split and splits.validation_warning(manifest, config.data.data_dir, split)
    if warning:
        log.warning("%s", warning)
    return Setup(
        num_classes=num_classes,
        image_size=int(config.data.image_size or manifest["image_size"]),
        global_batch=global_batch,
        steps_per_epoch=spe,
        total_steps=spe * int(config.train.epochs),
        train_count=train_count,
        # A split with no images selects nothing: the run keeps its last weights, as without one.
        has_validation=int((manifest["splits"].get(split) or {}).get("count") or 0) > 0,
    )


def prepare_model_dir(model_dir: str, config, chief: bool) -> None:
    """Creates model_dir, proves it writable, and records (or checks) the resolved config.

    A config that differs from the recorded one only in a higher ``train.epochs`` extends the
    run: config.json is rewritten with the new length. Any other difference is refused.
    """
    if not model_dir:
        raise EffdrError("--model_dir is required")
    resolved = config.to_json_best_effort(indent=1, sort_keys=True)
    path = os.path.join(model_dir, "config.json")
    if not chief:
        return
    try:
        tf.io.gfile.makedirs(model_dir)
        probe = os.path.join(model_dir, ".write_test")
        with tf.io.gfile.GFile(probe, "w") as f:
            f.write("x" * 65536)  # a full disk fails here, not after hours of training
        tf.io.gfile.remove(probe)
    except (tf.errors.OpError, OSError) as e:
        raise EffdrError(f"{model_dir}: cannot write there: {str(e).splitlines()[0]}") from e
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as f:
            before = json.load(f)
        after = json.loads(resolved)
        if before == after:
            return
        changed = sorted(_diff_keys(before, after))
        if changed == ["train.epochs"]:
            old, new = int(before["train"]["epochs"]), int(after["train"]["epochs"])
            if new < old:
                raise EffdrError(
                    f"{model_dir}: holds a run of {old} epochs; train.epochs={new} would shorten "
                    f"it (a run can only be extended): resume with train.epochs={old} or more, "
                    "or use a new model_dir"
                )
            # The schedule is a function of the global step, so an extended run continues the
            # same learning-rate curve; config.json records the new length for later resumes.
            _write_config(path, resolved)
            print(f"{model_dir}: extending the run from {old} to {new} epochs", flush=True)
            return
        raise EffdrError(
            f"{model_dir}: holds a run with another config (differs in "
            f"{', '.join(changed[:5])}); resume with the same settings (only train.epochs may "
            "be raised) or use a new model_dir"
        )
    _write_config(path, resolved)


def _write_config(path: str, resolved: str) -> None:
    """Writes config.json through a temporary name, so a reader never sees half of it."""
    tmp = f"{path}.tmp"
    if tf.io.gfile.exists(tmp):  # left by a kill; ram:// would append to it
        tf.io.gfile.remove(tmp)
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(resolved + "\n")
    tf.io.gfile.rename(tmp, path, overwrite=True)


def _diff_keys(a, b, prefix=""):
    keys = set(a) | set(b) if isinstance(a, dict) and isinstance(b, dict) else set()
    if not keys:
        return [prefix.rstrip(".")] if a != b else []
    out = []
    for k in keys:
        out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
    return out


def build_model(config, setup: Setup, strategy=None) -> keras.Model:
    dropout = config.model.dropout_rate
    model = models.efficientnet(
        config.variant,
        num_classes=heads.output_units(config.model.head, setup.num_classes),
        input_shape=(setup.image_size, setup.image_size, 3),
        weights=config.model.weights or None,
        normalization=config.model.normalization,
        reinit_head=config.model.reinit_head,
        dropout_rate=None if dropout is None or dropout < 0 else dropout,
        drop_connect_rate=config.model.drop_connect_rate,
        bn_momentum=recipes.bn_momentum(config.model.bn_momentum, setup.steps_per_epoch),
        bn_epsilon=config.model.bn_epsilon,
        bn_synchronized=distribute.sync_batch_norm(config.model.sync_batch_norm, strategy),
        classifier_initializer=heads.kernel_initializer(config.model.head),
    )
    if config.train.freeze_bn:
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
    return model


def trainable_for_epoch(model, config, epoch: int) -> list[str]:
    """Sets which layers train this epoch; returns the names of the stages that train.

    The backbone stays frozen for ``freeze_backbone_epochs`` (only the head trains); then stages
    are unfrozen from the top, ``unfreeze_stages_per_epoch`` at a time (0: all at once). Frozen
    batch norm stays frozen throughout.
    """
    frozen_epochs = int(config.train.freeze_backbone_epochs)
    per_epoch = int(config.train.unfreeze_stages_per_epoch)
    groups = ["stem"] + [f"block{i}" for i in range(1, 8)] + ["top"]
    if epoch < frozen_epochs:
        open_groups = set()
    elif per_epoch <= 0:
        open_groups = set(groups)
    else:
        count = (epoch - frozen_epochs + 1) * per_epoch
        open_groups = set(groups[::-1][:count])
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name == "predictions":
            layer.trainable = True
            continue
        group = layer.name.split("_")[0]
        group = group[:6] if group.startswith("block") else group
        train_it = group in open_groups
        if isinstance(layer, keras.layers.BatchNormalization) and config.train.freeze_bn:
            train_it = False
        layer.trainable = train_it
    return sorted(open_groups)


class Trainer:
    """Builds everything for one run and trains it; see ``train``."""

    def __init__(self, config, model_dir: str, strategy: tf.distribute.Strategy, progress=True):
        self.config = config
        self.model_dir = model_dir
        self.strategy = strategy
        self.progress = progress
        self.chief = distribute.is_chief(strategy)
        self.setup = check_config(config, strategy)
        # Weight initialisation and dropout follow the seed, so two runs of one config start
        # from the same weights.
        keras.utils.set_random_seed(int(config.seed))
        if config.train.deterministic:
            config.data.deterministic = True
            tf.config.experimental.enable_op_determinism()
        self.policy = recipes.set_precision(config.train.mixed_precision, strategy)
        self.jit_compile = distribute.jit_compile(config.train.jit_compile, strategy)
        self.steps_per_execution = distribute.steps_per_execution(
            config.train.steps_per_execution, strategy
        )
        s = self.setup
        with strategy.scope():
            self.model = build_model(config, s, strategy)
            self.schedule = recipes.make_schedule(config.train, s.steps_per_epoch, s.global_batch)
            self.optimizer = recipes.make_optimizer(config.train, self.schedule)
            # Built over every weight, so freezing and unfreezing later needs no new slots.
            self.optimizer.build(self.model.trainable_variables)
            if config.train.rms_starts_at_one:
                recipes.start_rms_at_one(self.optimizer)
            self.loss_scale = step_lib.LossScale() if self.policy == "mixed_float16" else None
            self.ema = (
                step_lib.EMA(self.model, config.train.ema_decay, config.train.ema_warmup)
                if config.train.ema_decay
                else None
            )
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
            self.best = tf.Variable(np.nan, dtype=tf.float64, trainable=False, name="best")
            self.plateau_wait = tf.Variable(0, dtype=tf.int64, trainable=False, name="wait")
        # Only once the model is built: a first start that fails there (a weights file missing
        # or for another variant) leaves no config.json to refuse the corrected command with.
        prepare_model_dir(model_dir, config, self.chief)
        self.replica_step = step_lib.ReplicaStep(
            self.model,
            self.optimizer,
            num_classes=s.num_classes,
            global_batch=s.global_batch,
            num_replicas=strategy.num_replicas_in_sync,
            label_smoothing=config.train.label_smoothing,
            class_weights=config.train.class_weights,
            weight_decay=config.train.weight_decay,
            loss_scale=self.loss_scale,
            ema=self.ema,
            head=config.model.head,
            regression_loss=config.train.regression_loss,
            accumulation_steps=config.train.accumulation_steps,
        )
        self.workers = distribute.num_workers(strategy)
        self.moving_statistics = replica_state.MovingStatistics(
            strategy,
            self.model,
            self.ema.averages_of(replica_state.moving_statistics(self.model))
            if self.ema is not None
            else (),
        )
        self.iterator = self._make_iterator(config.seed)
        tracked = {
            "model": self.model,
            "optimizer": self.optimizer,
            "step": self.step,
            "best": self.best,
            "plateau_wait": self.plateau_wait,
            "lr_scale": self.schedule.scale,
        }
        if self.loss_scale is not None:
            tracked["loss_scale"] = self.loss_scale
        if self.ema is not None:
            tracked["ema"] = self.ema.averages
        # Dropout and stochastic-depth random states: a resumed run draws the same masks.
        tracked["rng"] = replica_state.seed_states(self.model)
        # Iterators over one device are checkpointable; tf.distribute's multi-device iterators
        # are not, so those runs resume on a stream reshuffled by the step instead.
        wanted = config.train.checkpoint_input
        wanted = config.train.deterministic if wanted is None else wanted
        self.input_checkpointed = bool(wanted) and isinstance(
            self.iterator, tf.__internal__.tracking.Trackable
        )
        if self.input_checkpointed:
            tracked["input"] = self.iterator
        self.checkpoints = checkpointing.Checkpoints(
            model_dir, strategy, tracked, config.train.keep_checkpoints
        )
        self._monitor = None
        self._train_fn = None
        self._open_groups = None
        self.validation = Validation(
            config,
            self.model,
            strategy,
            image_size=s.image_size,
            head=config.model.head,
            num_classes=s.num_classes,
        )

    @property
    def monitor(self) -> Monitor:
        """TensorBoard and log.csv, opened on first use: after the restore in ``run``, so a
        run whose checkpoints do not read writes no event file."""
        if self._monitor is None:
            self._monitor = Monitor(self.model_dir, self.chief)
        return self._monitor

    def _make_iterator(self, seed: int, examples_seen: int = 0):
        config = self.config.copy_and_resolve_references()
        config.seed = int(seed)
        dataset = self.strategy.distribute_datasets_from_function(
            lambda ctx: pipeline.make_dataset(
                config, "train", input_context=ctx, examples_seen=examples_seen, transfer=True
            )
        )
        return iter(dataset)

    # ---------------------------------------------------------------------------------------
    # The step

    def _make_train_fn(self):
        step_fn = self.replica_step.__call__
        if self.jit_compile:
            # The whole replica step, as Keras compiles train_step; a fresh tf.function each
            # time the trainable weights change.
            step_fn = tf.function(step_fn, jit_compile=True)
        k = self.setup.num_classes
        sum_ = tf.distribute.ReduceOp.SUM
        first = self.strategy.experimental_local_results

        def one_step(iterator):
            images, labels = next(iterator)
            number = self.step + 1
            loss, reg, conf, applied, bad = self.strategy.run(
                step_fn, args=(images, labels, number)
            )
            loss = self.strategy.reduce(sum_, loss, axis=None)
            reg = self.strategy.reduce(sum_, reg, axis=None)
            conf = self.strategy.reduce(sum_, conf, axis=None)
            # Every replica took the same decision from the same all-reduced gradients; the
            # first one's is the run's.
            applied, bad = first(applied)[0], first(bad)[0]
            self.step.assign_add(1)
            return loss, reg, conf, applied, bad

        def outputs(loss, reg, confusion, skipped, bad):
            """What the host reads, all computed on the device in the same call."""
            out = {
                "loss": loss,
                "l2_loss": reg,
                "confusion": confusion,
                "skipped": skipped,
                "bad_variable": bad,
                "learning_rate": self.schedule(self.optimizer.iterations),
            }
            if self.loss_scale is not None:
                out["loss_scale"] = tf.identity(self.loss_scale.scale)
                out["skipped_in_row"] = tf.identity(self.loss_scale.skipped_in_row)
            return out

        @tf.function
        def single_step(iterator):
            loss, reg, conf, applied, bad = one_step(iterator)
            return outputs(loss, reg, conf, 1 - applied, bad)

        @tf.function
        def several_steps(iterator, n):
            loss_sum = tf.constant(0.0)
            reg_sum = tf.constant(0.0)
            confusion = tf.zeros([k, k], tf.int64)
            skipped = tf.constant(0, tf.int64)
            bad = tf.constant(-1, tf.int64)
            for _ in tf.range(n):
                loss, reg, conf, applied, bad = one_step(iterator)
                loss_sum += loss
                reg_sum += reg
                confusion += conf
                skipped += 1 - applied
            n_float = tf.cast(n, tf.float32)
            return outputs(loss_sum / n_float, reg_sum / n_float, confusion, skipped, bad)

        def train_steps(iterator, n):
            """The device-side figures of n steps: mean loss and L2 term, confusion, steps
            skipped for overflow, the last step's learning rate and loss-scale state.

            One step is traced without a loop: a tf.while_loop around the step costs time
            (grappler optimises loop bodies less) and one step per call is the usual case off
            TPUs; on TPUs n steps run in one call (a host loop) so the host is not waited on.
            Nothing is read back here: the caller reads a call's figures after the next call
            is queued, so a GPU never idles while Python looks at them.
            """
            if int(n) == 1:
                return single_step(iterator)
            return several_steps(iterator, n)

        return train_steps

    # ---------------------------------------------------------------------------------------
    # Evaluation

    def predict_split(self, split: str):
        """(labels, probabilities) for every example of ``split``, on every worker."""
        return self.validation.predict(split)

    @property
    def eval_traces(self) -> int:
        return self.validation.traces

    def evaluate(self, split: str) -> dict:
        """Metrics on ``split`` with the EMA weights when EMA is on."""
        if self.ema is not None:
            self.ema.swap()
        try:
            labels, probs = self.predict_split(split)
        finally:
            if self.ema is not None:
                self.ema.swap()
        k = self.setup.num_classes
        confusion = metrics.confusion_matrix(labels, probs.argmax(1), k)
        nll = -np.log(np.maximum(probs[np.arange(len(labels)), np.clip(labels, 0, k - 1)], 1e-12))
        return {
            "labels": labels,
            "probabilities": probs,
            "confusion": confusion,
            "loss": float(nll.mean()),
            "accuracy": metrics.accuracy(confusion),
            "kappa": metrics.quadratic_weighted_kappa(confusion),
            "recall": metrics.recall_per_class(confusion),
        }

    # ---------------------------------------------------------------------------------------
    # Best weights and export

    def save_best(self, value: float) -> bool:
        higher = self.config.train.best_metric != "loss"
        best = float(self.best.numpy())
        if not np.isnan(best) and (value <= best if higher else value >= best):
            return False
        self.best.assign(value)
        if self.chief:
            checkpointing.save_weights(self.model, self._best_path, self.ema)
        return True

    @property
    def _best_path(self) -> str:
        return os.path.join(self.model_dir, checkpointing.BEST_WEIGHTS)

    def export(self) -> None:
        """export/model.keras and export/saved_model in float32, holding the best weights
        (already EMA weights when EMA is on); without a validation split, the final ones."""
        if not self.chief or not self.config.train.export:
            return
        kept = self.model.get_weights()
        swapped = False
        if tf.io.gfile.exists(self._best_path):
            self.model.load_weights(self._best_path)
        elif self.ema is not None:
            self.ema.swap()
            swapped = True
        try:
            checkpointing.export(self.model, os.path.join(self.model_dir, "export"))
        finally:
            if swapped:  # swapping back restores both the weights and the averages
                self.ema.swap()
            else:
                self.model.set_weights(kept)

    # ---------------------------------------------------------------------------------------
    # The run

    def _log_first_batch(self) -> None:
        if not self.chief:
            return
        images, _ = next(iter(pipeline.make_dataset(self.config, "train")))
        if self.config.data.normalization == "model":
            self.monitor.images(self.monitor.train, "augmented_inputs", images, 0)

    def _refresh_trainability(self, epoch: int) -> None:
        groups = trainable_for_epoch(self.model, self.config, epoch)
        if groups != self._open_groups or self._train_fn is None:
            self._open_groups = groups
            self._train_fn = self._make_train_fn()
            if len(groups) < 9:
                print(f"epoch {epoch + 1}: training {', '.join(groups) or 'the head only'}")

    def run(self) -> dict:
        try:
            return self._run()
        finally:
            self.checkpoints.close()

    def restore(self) -> int:
        """Restores the latest checkpoint (if any) and what a checkpoint cannot hold: each
        replica's own random stream and, without a checkpointed input position, a stream
        reshuffled by the step that continues the sampler's share schedule. Returns the step."""
        step = self.checkpoints.restore(self.step)
        replica_state.separate_random_streams(self.strategy, self.model)
        if step and not self.input_checkpointed:
            log.info("input position not in checkpoints: continuing on a reshuffled stream")
            self.iterator = self._make_iterator(
                int(self.config.seed) + 104729 * step,
                examples_seen=step * self.setup.global_batch,
            )
        return step

    def _run(self) -> dict:
        s = self.setup
        step = self.restore()
        if step == 0:
            self.monitor.hparams(_flat(self.config.to_dict()))
            self._log_first_batch()
        history = {}
        last_saved = step
        while step < s.total_steps:
            epoch = step // s.steps_per_epoch
            self._refresh_trainability(epoch)
            epoch_end = (epoch + 1) * s.steps_per_epoch
            tally = _EpochTally(self, epoch, step)
            print(f"epoch {epoch + 1}/{self.config.train.epochs}", flush=True)
            pending = None
            while step < epoch_end:
                n = min(self.steps_per_execution, epoch_end - step)
                figures = self._train_fn(self.iterator, tf.constant(n))
                step += n
                # The previous call's figures are read now that this call is queued.
                if pending is not None:
                    tally.read(*pending)
                pending = (figures, n, step)
                every = self.config.train.checkpoint_every_steps
                save_now = step - last_saved >= every and step < epoch_end
                if save_now or step == epoch_end:
                    # Nothing is saved before this step's loss is known to be finite.
                    tally.read(*pending)
                    pending = None
                # The epoch's end saves after validation (with the best value): not twice.
                if save_now:
                    self.checkpoints.save(step)
                    last_saved = step
            row = tally.row(step)
            self.monitor.scalars(self.monitor.train, tally.epoch_scalars(), step)
            if s.has_validation:
                row.update(self._validate(step))
            self.checkpoints.save(step)
            last_saved = step
            self.monitor.csv_row(row)
            self.monitor.flush()
            history = row
            summary = " ".join(
                f"{k}={figure(v)}"
                for k, v in row.items()
                if isinstance(v, float) and "recall" not in k
            )
            print(f"epoch {epoch + 1}: {summary}", flush=True)
        # Every worker takes part (a collective); then the chief writes.
        self.moving_statistics()
        if s.total_steps and not s.has_validation and self.chief:
            checkpointing.save_weights(self.model, self._best_path, self.ema)
        self.export()
        self.monitor.flush()
        return history

    def _validate(self, step: int) -> dict:
        # Each replica's own batch-norm averages (no sync BN) would score another model.
        self.moving_statistics()
        result = self.evaluate(self.config.train.validation_split)
        names = (
            constants.DR_GRADES
            if self.setup.num_classes == 5
            else [str(c) for c in range(self.setup.num_classes)]
        )
        values = {k: result[k] for k in ("loss", "accuracy", "kappa")}
        for c, recall in enumerate(result["recall"]):
            values[f"recall_{c}"] = float(recall)
        self.monitor.scalars(self.monitor.eval, values, step)
        self.monitor.confusion(result["confusion"], step, names)
        self.monitor.pr_curves(result["labels"], result["probabilities"], step, names)
        # One value on every worker, so that every worker takes the same decisions.
        metric = replica_state.chief_value(
            self.strategy, result[self.config.train.best_metric], self.chief, self.workers
        )
        improved = self.save_best(metric)
        if self.config.train.schedule == "plateau":
            self.plateau_wait.assign(0 if improved else self.plateau_wait + 1)
            if int(self.plateau_wait.numpy()) >= self.config.train.plateau_patience:
                self.schedule.scale.assign(self.schedule.scale * self.config.train.plateau_factor)
                self.plateau_wait.assign(0)
                print(
                    f"validation {self.config.train.best_metric} did not improve: learning "
                    f"rate x{self.config.train.plateau_factor}"
                )
        return {f"val_{k}": v for k, v in values.items()}


def figure(value: float) -> str:
    """A figure for a log line: four decimals, or four significant digits where four decimals
    would print a small value (a learning rate of 5e-05) as 0.0000."""
    if value != 0 and abs(value) < 0.01:
        return f"{value:.4g}"
    return f"{value:.4f}"


class LossScaleCollapsedError(EffdrError):
    """float16 updates were skipped for non-finite gradients too often in a row."""


class _EpochTally:
    """One epoch's figures on the host: read from the device one call late, summed, shown in
    the progress bar and TensorBoard, and checked (a non-finite loss, a loss scale that
    collapsed)."""

    def __init__(self, trainer: Trainer, epoch: int, step: int):
        self.trainer = trainer
        s = trainer.setup
        self.epoch = epoch
        self.epoch_end = (epoch + 1) * s.steps_per_epoch
        self.start_step = step
        self.bar = keras.utils.Progbar(
            s.steps_per_epoch,
            # Redrawn with control codes: only on a terminal. In a redirected log each epoch's
            # one-line summary stands instead.
            verbose=1 if trainer.progress and sys.stdout.isatty() else 0,
            stateful_metrics=["loss", "accuracy", "kappa", "lr"],
        )
        self.confusion = np.zeros((s.num_classes, s.num_classes), np.int64)
        self.loss_sum = 0.0
        self.steps = 0
        self.skipped = 0
        self.learning_rate = float("nan")
        self.started = self.last_read = time.perf_counter()

    def read(self, figures: dict, n: int, step: int) -> None:
        t = self.trainer
        values = {k: v.numpy() for k, v in figures.items()}
        loss = float(values["loss"])
        if not np.isfinite(loss):
            good = t.checkpoints.latest or "none"
            raise TrainingDivergedError(
                f"loss became {loss} at step {step}; stopped without saving (last good "
                f"checkpoint: {good}); lower the learning rate or check the data"
            )
        self._check_loss_scale(values, step)
        self.loss_sum += loss * n
        self.steps += n
        self.confusion += values["confusion"]
        self.skipped += int(values["skipped"])
        self.learning_rate = float(values["learning_rate"])
        now = time.perf_counter()
        seconds, self.last_read = now - self.last_read, now
        self.bar.update(
            step - self.epoch * t.setup.steps_per_epoch,
            [
                ("loss", loss),
                ("accuracy", metrics.accuracy(self.confusion)),
                ("kappa", metrics.quadratic_weighted_kappa(self.confusion)),
                ("lr", self.learning_rate),
            ],
        )
        if step % max(1, t.config.train.log_every_steps) < n or step == self.epoch_end:
            scalars = {
                "loss": loss,
                "l2_loss": float(values["l2_loss"]),
                "learning_rate": self.learning_rate,
                "steps_per_second": n / seconds,
                "images_per_second": n * t.setup.global_batch / seconds,
            }
            if "loss_scale" in values:
                scalars["loss_scale"] = float(values["loss_scale"])
                scalars["overflow_steps"] = self.skipped
            t.monitor.scalars(t.monitor.train, scalars, step)

    def _check_loss_scale(self, values: dict, step: int) -> None:
        if "skipped_in_row" not in values:
            return
        in_row, scale = int(values["skipped_in_row"]), float(values["loss_scale"])
        limit = int(self.trainer.config.train.max_skipped_steps)
        if in_row < limit and scale >= 1.0:
            return
        bad = int(values["bad_variable"])
        trainable = self.trainer.model.trainable_variables
        where = trainable[bad].path if 0 <= bad < len(trainable) else "unknown"
        good = self.trainer.checkpoints.latest or "none"
        raise LossScaleCollapsedError(
            f"float16: {in_row} updates in a row skipped for non-finite gradients (loss scale "
            f"{scale:g}) at step {step}, first non-finite gradient: {where}; stopped without "
            f"saving (last good checkpoint: {good}); lower the learning rate, check the data "
            "or train in float32 (train.mixed_precision=float32)"
        )

    def row(self, step: int) -> dict:
        """The epoch's log.csv row (without validation)."""
        elapsed = time.perf_counter() - self.started
        row = {
            "epoch": self.epoch + 1,
            "step": step,
            "learning_rate": self.learning_rate,
            "images_per_second": (step - self.start_step)
            * self.trainer.setup.global_batch
            / elapsed,
            **self.train_metrics(),
        }
        if self.trainer.loss_scale is not None:
            row["overflow_steps"] = self.skipped
        return row

    def train_metrics(self) -> dict:
        out = {
            "train_loss": self.loss_sum / max(1, self.steps),
            "train_accuracy": metrics.accuracy(self.confusion),
            "train_kappa": metrics.quadratic_weighted_kappa(self.confusion),
        }
        for c, recall in enumerate(metrics.recall_per_class(self.confusion)):
            out[f"train_recall_{c}"] = float(recall)
        return out

    def epoch_scalars(self) -> dict:
        """The epoch's figures for TensorBoard: ``epoch_loss`` (the step scalar ``loss`` has
        a value at this step already), accuracy, kappa, per-class recall."""
        return {
            ("epoch_loss" if k == "train_loss" else k.removeprefix("train_")): v
            for k, v in self.train_metrics().items()
        }


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def single_threaded_kernels() -> bool:
    """One op at a time on one thread, so that every step is bit-exact from run to run.

    enable_op_determinism is not enough on CPU. Multi-threaded kernels (measured: the filter
    gradient of EfficientNet's 1x1 head convolution) sum partial results in an order that varies
    between runs, about 1e-5 relative; and with one thread per op, ops that run side by side
    still give run-to-run differences (measured with dropout off and oneDNN off). Training
    amplifies either into different predictions. tf.data keeps its own threads, so input
    preparation still runs in parallel. Must run before TensorFlow executes its first op;
    returns False (and warns) when it is too late.
    """
    threading = tf.config.threading
    try:
        threading.set_intra_op_parallelism_threads(1)
        threading.set_inter_op_parallelism_threads(1)
        return True
    except RuntimeError:
        if (threading.get_intra_op_parallelism_threads(),
                threading.get_inter_op_parallelism_threads()) == (1, 1):  # fmt: skip
            return True
        log.warning(
            "train.deterministic: TensorFlow was already running with several threads per "
            "op; results are reproducible only up to float rounding (about 1e-5 relative)"
        )
        return False


def train(
    config,
    model_dir: str,
    *,
    strategy: str = "default",
    tpu: str | None = None,
    progress: bool = True,
) -> dict:
    """Trains (or resumes training) per ``config`` into ``model_dir``; returns the last
    epoch's metrics."""
    if config.train.deterministic and strategy == "default":
        single_threaded_kernels()
    elif config.train.deterministic:
        # Replicas' collectives wait for each other: one op at a time would deadlock them.
        log.warning(
            "train.deterministic under --strategy=%s: ops stay multi-threaded, so results are "
            "reproducible only up to float rounding (about 1e-5 relative)",
            strategy,
        )
    strategy_obj = distribute.make_strategy(
        strategy, tpu, model_dir=model_dir, data_dir=config.data.data_dir
    )
    try:
        return Trainer(config, model_dir, strategy_obj, progress=progress).run()
    finally:
        keras.mixed_precision.set_global_policy("float32")
