"""Checkpoints, the best weights and the exported model of a run, local or on a bucket.

Every worker restores from ``model_dir/checkpoints``, the chief's folder; the chief writes
there, the other workers write to a local scratch folder (every worker must call ``save``
under MultiWorkerMirroredStrategy) that is removed when the run ends. ``model_dir`` must
therefore be storage that every worker reads (gs://, NFS): after restoring, the workers compare
their steps and stop with one line when they differ, instead of training out of step until a
collective hangs.

Restoring takes the newest checkpoint that reads. One that does not (a data file cut short by a
full disk or an interrupted upload, a missing or truncated ``.index``) is moved, bytes intact,
to ``checkpoints/corrupt/`` and dropped from the ``checkpoint`` index, with one warning line;
the next older one is restored over every object, so nothing half-read from the bad one stays.
When none reads, nothing is moved and the run stops with one line. A checkpoint that reads but
does not fit the objects (another model) is one line too, never a fallback.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile

import tensorflow as tf
from google.protobuf import text_format
from google.protobuf.message import DecodeError

from effdr_tf import fileio, models
from effdr_tf.errors import EffdrError, WeightsError
from effdr_tf.training import distribute

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
CORRUPT = "corrupt"
BEST_WEIGHTS = "best.weights.h5"
INDEX = "checkpoint"
# What a checkpoint may lack: the float16 loss scale, tracked only under mixed_float16. A run
# started on CPU (float32) and resumed on a GPU (``mixed_precision="auto"`` resolves per
# device) starts a fresh one; the reverse ignores the saved one.
OPTIONAL = ("loss_scale",)

# Failures of the storage rather than of the file: the checkpoint may be intact, so it is
# neither skipped nor moved.
_UNREACHABLE = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.PermissionDeniedError,
    tf.errors.UnauthenticatedError,
    tf.errors.ResourceExhaustedError,
    tf.errors.AbortedError,
    tf.errors.CancelledError,
)
# What reading a damaged checkpoint raises: TensorFlow reports a short data file as
# IndexError ("Read less bytes than requested"), a truncated .index as a bare OpError ("not an
# sstable"), a flipped byte as DataLossError, a missing file as NotFoundError.
_DAMAGED = (tf.errors.OpError, IndexError, DecodeError)


class WorkersOutOfStepError(EffdrError):
    """Workers restored different checkpoints."""


class CheckpointMismatchError(WeightsError):
    """A checkpoint that reads but does not hold what this run tracks (another model)."""


class NoReadableCheckpointError(WeightsError):
    """The checkpoint index lists checkpoints, and none of them reads."""


class _UnreadableError(Exception):
    """A checkpoint whose files do not read back: the next older one is tried."""

    def __init__(self, path: str, error: BaseException):
        super().__init__(path)
        self.path = path
        self.reason = _reason(error)


class Checkpoints:
    """The run's resume point: what ``tracked`` names, saved every N steps and per epoch."""

    def __init__(self, model_dir: str, strategy, tracked: dict, keep: int):
        self.strategy = strategy
        self.chief = distribute.is_chief(strategy)
        self.shared = os.path.join(model_dir, CHECKPOINTS)
        self.keep = int(keep)
        self.scratch = None
        self.tracked = dict(tracked)
        self.checkpoint = tf.train.Checkpoint(**self.tracked)
        # Values an optional object gets back when the checkpoint lacks it: its fresh state,
        # also over anything a failed attempt on a newer checkpoint half-restored.
        self._initial = {
            name: [v.numpy() for v in _variables(self.tracked[name])]
            for name in OPTIONAL
            if name in self.tracked
        }
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
        """Restores the newest of the chief's checkpoints that reads, if any; returns the step
        (0 for none).

        Raises:
            NoReadableCheckpointError: checkpoints are listed and none reads (nothing moved).
            CheckpointMismatchError: the newest readable one does not fit the tracked objects.
            EffdrError: the storage could not be reached or the index does not parse.
        """
        candidates = self._candidates()
        unreadable = []
        restored = skipped = None
        for path in candidates:
            try:
                skipped = self._restore_from(path)
            except _UnreadableError as e:
                unreadable.append(e)
                continue
            restored = path
            break
        if candidates and restored is None:
            names = ", ".join(os.path.basename(e.path) for e in reversed(unreadable))
            raise NoReadableCheckpointError(
                f"{self.shared}: no checkpoint reads ({names}; {unreadable[0].path}: "
                f"{unreadable[0].reason}); nothing was moved: restore the folder from a copy, "
                "or move it aside to train from the start"
            )
        for bad in unreadable:
            self._set_aside(bad, restored)
        if unreadable and self.chief:
            self._drop_from_index([bad.path for bad in unreadable], restored)
        for name in skipped or ():
            print(
                f"{restored} holds no {name.replace('_', ' ')} (written in another precision): "
                f"starting from a fresh one ({self._describe_initial(name)})",
                flush=True,
            )
        step = int(step_variable.numpy())
        check_workers_agree(self.strategy, step)
        if restored is not None:
            print(f"resuming from step {step} ({restored})", flush=True)
        return step

    def _candidates(self) -> list[str]:
        """The checkpoints the index lists, newest first."""
        state = _read_index(self.shared)
        if state is None:
            return []
        paths = list(state.all_model_checkpoint_paths)
        if state.model_checkpoint_path not in paths:
            paths.append(state.model_checkpoint_path)
        return paths[::-1]

    def _restore_from(self, path: str) -> list[str]:
        """Restores every tracked object from ``path``; returns the optional ones it lacked
        (reset to their fresh state)."""
        try:
            # Not tf.train.load_checkpoint: on object stores where any prefix is a folder
            # (ram://) it takes the checkpoint for a folder and finds nothing in it.
            saved = tf.compat.v1.train.NewCheckpointReader(path).get_variable_to_shape_map()
        except _UNREACHABLE as e:
            raise EffdrError(f"{path}: cannot be read now: {_reason(e)}; rerun later") from e
        except _DAMAGED as e:
            raise _UnreadableError(path, e) from e
        held = {key.split("/", 1)[0] for key in saved}
        lacking = [name for name in self._initial if name not in held]
        root = self.checkpoint
        if lacking:
            root = tf.train.Checkpoint(
                **{k: v for k, v in self.tracked.items() if k not in lacking}
            )
        try:
            status = root.restore(path)
            status.assert_existing_objects_matched()
        except _UNREACHABLE as e:
            raise EffdrError(f"{path}: cannot be read now: {_reason(e)}; rerun later") from e
        except _DAMAGED as e:
            raise _UnreadableError(path, e) from e
        except (AssertionError, ValueError) as e:
            raise CheckpointMismatchError(
                f"{path}: does not fit this run ({self._mismatch(e, held)}); resume with the "
                "code and config that wrote it, or use a new model_dir"
            ) from e
        # The checkpoint's own extras (a loss scale this run does not use) are expected.
        status.expect_partial()
        for name in lacking:
            variables = _variables(self.tracked[name])
            for variable, value in zip(variables, self._initial[name], strict=True):
                variable.assign(value)
        return lacking

    def _describe_initial(self, name: str) -> str:
        variables = _variables(self.tracked[name])
        return ", ".join(
            f"{v.name.split(':')[0].rsplit('/', 1)[-1]}={float(x):g}"
            for v, x in zip(variables, self._initial[name], strict=True)
        )

    def _mismatch(self, error: BaseException, held: set) -> str:
        """What did not match, in a few words: the tracked objects the checkpoint has nothing
        of, else the first unmatched values TensorFlow names."""
        absent = [
            name
            for name, obj in self.tracked.items()
            if name not in held and name not in OPTIONAL and not _empty(obj)
        ]
        if absent:
            return f"it holds no {', '.join(absent)}"
        text = str(error)
        if isinstance(error, ValueError):
            return _reason(error).rstrip(".")
        names = re.findall(r"path=([^,>\s]+)|<tf\.Variable '([^':]+)", text)
        count = re.search(r"Found (\d+) Python objects", text)
        if names:
            shown = ", ".join(a or b for a, b in names[:3])
            total = count.group(1) if count else str(len(names))
            return f"{total} values of this run not in it: {shown}"
        return _reason(error)[:200]

    def _set_aside(self, bad: _UnreadableError, restored: str) -> None:
        """Warns about an unreadable checkpoint and, on the chief, moves its files (intact)
        to checkpoints/corrupt/, so that no later save writes over them."""
        where = "its files stay in place (the chief moves them)"
        if self.chief:
            folder = f"{self.shared}/{CORRUPT}"
            name = os.path.basename(bad.path)
            target = f"{folder}/{name}"
            number = 1
            while tf.io.gfile.glob(f"{target}.*"):
                number += 1
                target = f"{folder}/{name}_{number}"
            try:
                tf.io.gfile.makedirs(folder)
                for file in tf.io.gfile.glob(f"{bad.path}.*"):
                    suffix = file[len(bad.path) :]
                    tf.io.gfile.rename(file, f"{target}{suffix}", overwrite=False)
            except tf.errors.OpError as e:
                raise EffdrError(
                    f"{bad.path}: cannot be read ({bad.reason}) and cannot be moved to {folder}: "
                    f"{_reason(e)}"
                ) from e
            where = f"moved to {target}.*"
        line = (
            f"warning: checkpoint {bad.path} cannot be read ({bad.reason}); {where}; resuming "
            f"from {os.path.basename(restored)}"
        )
        print(line, flush=True)
        log.warning("%s", line)

    def _drop_from_index(self, paths: list[str], latest: str) -> None:
        """Rewrites the index without ``paths`` and with ``latest`` as the latest, atomically,
        names relative as TensorFlow's CheckpointManager writes them (so the folder can be
        copied elsewhere)."""
        state = _read_index(self.shared)
        dropped = {os.path.basename(p) for p in paths}
        kept = [
            (os.path.basename(p), t)
            for p, t in _with_timestamps(state)
            if os.path.basename(p) not in dropped
        ]
        if os.path.basename(latest) not in [p for p, _ in kept]:
            kept.append((os.path.basename(latest), 0.0))
        fresh = type(state)()
        fresh.model_checkpoint_path = os.path.basename(latest)
        fresh.all_model_checkpoint_paths.extend(p for p, _ in kept)
        if len(state.all_model_checkpoint_timestamps) == len(state.all_model_checkpoint_paths):
            fresh.all_model_checkpoint_timestamps.extend(t for _, t in kept)
        fresh.last_preserved_timestamp = state.last_preserved_timestamp
        index = f"{self.shared}/{INDEX}"
        tmp = f"{index}.tmp"
        if tf.io.gfile.exists(tmp):  # left by a kill; ram:// would append to it
            tf.io.gfile.remove(tmp)
        with tf.io.gfile.GFile(tmp, "w") as f:
            f.write(text_format.MessageToString(fresh))
        tf.io.gfile.rename(tmp, index, overwrite=True)

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


def _read_index(folder: str):
    """The CheckpointManager's index of ``folder`` (None when there is none)."""
    index = f"{folder}/{INDEX}"
    if not tf.io.gfile.exists(index):
        return None
    # get_checkpoint_state answers None for an index that does not parse, which would start
    # the run again from step 0 and let the manager delete the old checkpoints.
    try:
        state = tf.train.get_checkpoint_state(folder)
    except ValueError:  # parsed, but names no latest checkpoint
        state = None
    if state is None:
        raise EffdrError(
            f"{index}: cannot be parsed; list the checkpoints to keep in it (as "
            'model_checkpoint_path: "ckpt-N"), or move the folder aside to restart'
        )
    return state


def _with_timestamps(state):
    paths = list(state.all_model_checkpoint_paths)
    times = list(state.all_model_checkpoint_timestamps)
    if len(times) != len(paths):
        times = [0.0] * len(paths)
    return list(zip(paths, times, strict=True))


def _variables(obj) -> list:
    if isinstance(obj, tf.Variable):
        return [obj]
    return list(obj.variables)


def _empty(obj) -> bool:
    return isinstance(obj, list | tuple | dict) and not obj


def _reason(error: BaseException) -> str:
    """The first line of a TensorFlow error without its op and function decorations."""
    text = str(error).strip().splitlines()
    if not text and isinstance(error, IndexError):  # so reads a short file on ram://
        return "a data file shorter than its index says"
    text = text[0] if text else type(error).__name__
    text = re.sub(r"\{\{[^}]*\}\}\s*", "", text)
    text = re.sub(r"\s*\[Op:\w+\]$", "", text)
    return text or type(error).__name__
