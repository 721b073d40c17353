"""Checkpoints, the best weights and the exported model of a run, local or on a bucket.

Every worker restores from ``model_dir/checkpoints``, the chief's folder; the chief writes
there, the other workers write to a local scratch folder (every worker must call ``save``
under MultiWorkerMirroredStrategy) that is removed when the run ends. ``model_dir`` must
therefore be storage that every worker reads (gs://, NFS): after restoring, the workers compare
their steps and stop with one line when they differ, instead of training out of step until a
collective hangs.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import tensorflow as tf

from effdr_tf import fileio, models
from effdr_tf.errors import EffdrError
from effdr_tf.training import distribute

CHECKPOINTS = "checkpoints"
BEST_WEIGHTS = "best.weights.h5"


class WorkersOutOfStepError(EffdrError):
    """Workers restored different checkpoints."""


class Checkpoints:
    """The run's resume point: what ``tracked`` names, saved every N steps and per epoch."""

    def __init__(self, model_dir: str, strategy, tracked: dict, keep: int):
        self.strategy = strategy
        self.chief = distribute.is_chief(strategy)
        self.shared = os.path.join(model_dir, CHECKPOINTS)
        self.keep = int(keep)
        self.scratch = None
        self.checkpoint = tf.train.Checkpoint(**tracked)
        self._manager = None

    @property
    def manager(self) -> tf.train.CheckpointManager:
        """Made on the first save, so a worker that never saves leaves no scratch folder."""
        if self._manager is None:
            directory = self.shared
            if not self.chief:
                worker = distribute.worker_id(self.strategy)
                self.scratch = tempfile.mkdtemp(prefix=f"effdr_worker{worker}_")
                directory = self.scratch
            self._manager = tf.train.CheckpointManager(
                self.checkpoint, directory, max_to_keep=self.keep
            )
        return self._manager

    @property
    def latest(self) -> str | None:
        return tf.train.latest_checkpoint(self.shared)

    def restore(self, step_variable) -> int:
        """Restores the chief's latest checkpoint, if any; returns the step (0 for none)."""
        latest = self.latest
        if latest is not None:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        step = int(step_variable.numpy())
        check_workers_agree(self.strategy, step)
        if latest is not None:
            print(f"resuming from step {step} ({latest})", flush=True)
        return step

    def save(self, step: int) -> None:
        self.manager.save(checkpoint_number=step)

    def close(self) -> None:
        """Removes a non-chief worker's scratch checkpoints."""
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None
            self._manager = None


def check_workers_agree(strategy, step: int) -> None:
    """Every worker's restored step, gathered across workers; a difference is an error."""
    if distribute.num_workers(strategy) < 2:
        return
    mine = strategy.run(lambda: tf.constant([step], tf.int64))
    steps = strategy.gather(mine, axis=0).numpy()
    if steps.min() != steps.max():
        raise WorkersOutOfStepError(
            f"workers restored different steps ({', '.join(map(str, sorted(set(steps))))}; this "
            f"worker: {step}): model_dir must be storage that every worker reads (gs://, NFS), "
            "not a folder local to each machine"
        )


def save_weights(model, path: str, ema=None) -> None:
    """Writes the model's weights (the EMA averages when ``ema`` is given) atomically."""
    if ema is not None:
        ema.swap()
    try:
        tmp = path[: -len(".weights.h5")] + ".tmp.weights.h5"
        model.save_weights(tmp)
        tf.io.gfile.rename(tmp, path, overwrite=True)
    finally:
        if ema is not None:
            ema.swap()


def export(model, folder: str) -> None:
    """``model.keras`` and ``saved_model/`` under ``folder``, in float32 whatever the training
    policy, so they load and convert (TFLite) on any machine."""
    gfile = tf.io.gfile
    gfile.makedirs(folder)
    plain = models.float32_copy(model)
    keras_path = f"{folder}/model.keras"
    tmp_keras = f"{folder}/model.tmp.keras"
    plain.save(tmp_keras)
    gfile.rename(tmp_keras, keras_path, overwrite=True)
    saved = f"{folder}/saved_model"
    tmp_saved = fileio.temporary_name(saved)
    fileio.remove_tree(tmp_saved)
    plain.export(tmp_saved, verbose=False)
    fileio.replace_dir(tmp_saved, saved)
