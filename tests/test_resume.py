"""Resuming a run: on another kind of device (the float16 loss scale), past a checkpoint that
does not read, and for more epochs than it was started with."""

import csv
import io
import logging
import uuid

import keras
import numpy as np
import pytest
import tensorflow as tf

from effdr_tf.errors import EffdrError
from effdr_tf.training import checkpointing, loop, recipes
from effdr_tf.training import step as step_lib
from tests.conftest import run_command
from tests.test_pipeline import build_tiny
from tests.test_training import TINY_CONFIG, tiny_config

# The learning rate halves at every epoch's end, so every log.csv row has its own rate.
SCHEDULE = {"train__schedule": "step", "train__decay_epochs": 1.0, "train__decay_rate": 0.5}
SCHEDULE_FLAGS = [
    "--config.train.schedule=step",
    "--config.train.decay_epochs=1.0",
    "--config.train.decay_rate=0.5",
]
DATA_FILE = ".data-00000-of-00001"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A train split only: no validation pass per epoch, to keep the runs short."""
    out = tmp_path_factory.mktemp("resume_data")
    build_tiny(out, {"train": [24, 16, 16, 12, 12]}, textured=True)
    return out


@pytest.fixture(scope="module")
def two_epochs(data, tmp_path_factory):
    """A finished float32 run of 2 epochs of 4 steps, a checkpoint every 2 steps: ckpt-4,
    ckpt-6 and ckpt-8 kept. Tests resume copies of it."""
    out = tmp_path_factory.mktemp("two_epochs") / "run"
    loop.train(config(data, 2), str(out), progress=False)
    return out


def config(data, epochs, **overrides):
    return tiny_config(data, train__epochs=epochs, **SCHEDULE, **overrides)


def copy_run(src, dst: str) -> str:
    """Copies a run folder with tf.io.gfile, so that ``dst`` may be on ram://."""
    src = str(src)
    for root, _, files in tf.io.gfile.walk(src):
        folder = dst + root[len(src) :]
        tf.io.gfile.makedirs(folder)
        for name in files:
            tf.io.gfile.copy(f"{root}/{name}", f"{folder}/{name}")
    return dst


def read(path: str) -> bytes:
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read()


def truncate(path: str, keep: float = 0.5) -> bytes:
    """Cuts a file short as a full disk or an interrupted upload does; returns what is left."""
    data = read(path)
    data = data[: int(len(data) * keep)]
    tf.io.gfile.remove(path)  # ram:// appends to a file opened for writing
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(data)
    return data


def learning_rates(run: str) -> list[float]:
    with tf.io.gfile.GFile(f"{run}/log.csv") as f:
        return [float(row["learning_rate"]) for row in csv.DictReader(io.StringIO(f.read()))]


def lines(text: str, *words: str) -> list[str]:
    return [line for line in text.splitlines() if all(w in line for w in words)]


def saved_keys(path: str) -> set[str]:
    return {key for key, _ in tf.train.list_variables(path)}


class Records(logging.Handler):
    """The warnings of one logger, whatever an earlier test did to propagation."""

    def __init__(self, name: str):
        super().__init__(logging.WARNING)
        self.records = []
        self.logger = logging.getLogger(name)

    def emit(self, record):
        self.records.append(record.getMessage())

    def __enter__(self):
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)


# ---------------------------------------------------------------------------------------------
# Extending a finished run


@pytest.mark.parametrize("where", ["local", "ram"])
def test_only_a_higher_epoch_count_changes_a_recorded_config(tmp_path, capsys, where):
    run = str(tmp_path / "run") if where == "local" else f"ram://extend-{uuid.uuid4().hex}/run"
    first = config("unused", 2)
    loop.prepare_model_dir(run, first, chief=True)
    recorded = read(f"{run}/config.json")

    loop.prepare_model_dir(run, config("unused", 2), chief=True)  # the same: nothing printed
    assert capsys.readouterr().out == ""

    with pytest.raises(EffdrError, match=r"holds a run of 2 epochs; train\.epochs=1 would"):
        loop.prepare_model_dir(run, config("unused", 1), chief=True)
    with pytest.raises(EffdrError, match=r"differs in train\.epochs, train\.learning_rate"):
        loop.prepare_model_dir(run, config("unused", 5, train__learning_rate=0.5), chief=True)
    assert read(f"{run}/config.json") == recorded

    loop.prepare_model_dir(run, config("unused", 5), chief=True)
    assert lines(capsys.readouterr().out) == [f"{run}: extending the run from 2 to 5 epochs"]
    assert tf.io.gfile.listdir(run) == ["config.json"]  # no temporary file left
    extended = read(f"{run}/config.json").decode()
    assert extended.replace('"epochs": 5', '"epochs": 2') == recorded.decode()


def test_an_extended_run_continues_the_learning_rate_curve(data, two_epochs, tmp_path, capsys):
    run = copy_run(two_epochs, str(tmp_path / "extended"))
    capsys.readouterr()
    loop.train(config(data, 4), run, progress=False)
    out = capsys.readouterr().out
    assert lines(out, "extending the run") == [f"{run}: extending the run from 2 to 4 epochs"]
    assert len(lines(out, "resuming from step 8 ")) == 1

    straight = str(tmp_path / "straight")
    loop.train(config(data, 4), straight, progress=False)

    schedule = recipes.make_schedule(config(data, 4).train, steps_per_epoch=4, global_batch_size=8)
    # log.csv holds the rate after each epoch's last update: steps 4, 8, 12, 16.
    want = [float(schedule(4 * epoch)) for epoch in range(1, 5)]
    assert len(set(want)) == 4
    assert learning_rates(run) == pytest.approx(learning_rates(straight), rel=1e-6)
    assert learning_rates(run) == pytest.approx(want, rel=1e-5)  # log.csv keeps 6 digits


# ---------------------------------------------------------------------------------------------
# Another kind of device: the float16 loss scale


def _auto_is_float16(monkeypatch):
    """``mixed_precision="auto"`` as it resolves on a GPU."""
    real = recipes.set_precision
    monkeypatch.setattr(
        recipes,
        "set_precision",
        lambda policy, strategy: real("mixed_float16" if policy == "auto" else policy, strategy),
    )


def test_a_cpu_run_resumes_on_a_gpu_and_back(data, two_epochs, tmp_path, capsys, monkeypatch):
    """The same command (mixed_precision="auto") on a CPU, a GPU, then a CPU again."""
    run = copy_run(two_epochs, str(tmp_path / "run"))
    assert not any(key.startswith("loss_scale/") for key in saved_keys(f"{run}/checkpoints"))
    capsys.readouterr()

    with monkeypatch.context() as patch:
        _auto_is_float16(patch)
        loop.train(config(data, 3), run, progress=False)
    out = capsys.readouterr().out
    fresh = lines(out, "holds no loss scale")
    assert fresh == [
        f"{run}/checkpoints/ckpt-8 holds no loss scale (written in another precision): "
        "starting from a fresh one (good_steps=0, scale=32768, skipped_in_row=0)"
    ]
    assert len(lines(out, "resuming from step 8 ")) == 1
    latest = tf.train.latest_checkpoint(f"{run}/checkpoints")
    assert latest.endswith("ckpt-12")
    # The float16 epoch ran: its checkpoint holds the loss scale it trained with.
    reader = tf.train.load_checkpoint(latest)
    assert reader.get_tensor("loss_scale/scale/.ATTRIBUTES/VARIABLE_VALUE") > 0
    assert keras.mixed_precision.global_policy().name == "float32"

    loop.train(config(data, 4), run, progress=False)  # float32 again: the loss scale is ignored
    out = capsys.readouterr().out
    assert len(lines(out, "resuming from step 12 ")) == 1
    assert not lines(out, "loss scale")
    assert not any(key.startswith("loss_scale/") for key in saved_keys(f"{run}/checkpoints"))
    assert len(learning_rates(run)) == 4 and all(np.isfinite(learning_rates(run)))


def _objects(kernel_shape=(3, 2), loss_scale=False, ema=False):
    """What a run tracks, in small: a model, an EMA, a step and maybe a loss scale."""
    model = keras.Sequential([keras.Input(kernel_shape[:1]), keras.layers.Dense(kernel_shape[1])])
    tracked = {"model": model, "step": tf.Variable(0, dtype=tf.int64), "empty": []}
    if ema:
        tracked["ema"] = [tf.Variable(tf.zeros_like(w)) for w in model.weights]
    if loss_scale:
        tracked["loss_scale"] = step_lib.LossScale()
    return tracked


def _save(folder, tracked, step: int, value: float):
    for w in tracked["model"].weights:
        w.assign(tf.fill(w.shape, value))
    tracked["step"].assign(step)
    checkpoints = checkpointing.Checkpoints(str(folder), tf.distribute.get_strategy(), tracked, 3)
    checkpoints.save(step)
    return checkpoints


def _restored(folder, tracked):
    checkpoints = checkpointing.Checkpoints(str(folder), tf.distribute.get_strategy(), tracked, 3)
    return checkpoints, checkpoints.restore(tracked["step"])


def test_the_loss_scale_is_optional_in_both_directions(tmp_path, capsys):
    float32 = _objects()
    _save(tmp_path / "cpu", float32, 3, 1.5)
    float16 = _objects(loss_scale=True)
    checkpoints = checkpointing.Checkpoints(
        str(tmp_path / "cpu"), tf.distribute.get_strategy(), float16, 3
    )
    float16["loss_scale"].scale.assign(7.0)  # whatever it held before: the fresh state wins
    assert checkpoints.restore(float16["step"]) == 3
    assert float(float16["loss_scale"].scale.numpy()) == 2.0**15
    assert int(float16["loss_scale"].good_steps.numpy()) == 0
    assert all(np.all(w.numpy() == 1.5) for w in float16["model"].weights)
    assert len(lines(capsys.readouterr().out, "holds no loss scale")) == 1

    gpu = _objects(loss_scale=True)
    gpu["loss_scale"].scale.assign(1024.0)
    _save(tmp_path / "gpu", gpu, 5, 2.5)
    cpu = _objects()
    _, step = _restored(tmp_path / "gpu", cpu)
    assert step == 5 and all(np.all(w.numpy() == 2.5) for w in cpu["model"].weights)
    assert not lines(capsys.readouterr().out, "loss scale")


def test_a_checkpoint_of_another_model_is_one_line(tmp_path):
    _save(tmp_path, _objects((3, 2)), 2, 1.0)
    with pytest.raises(checkpointing.CheckpointMismatchError) as shape:
        _restored(tmp_path, _objects((3, 4)))
    with pytest.raises(checkpointing.CheckpointMismatchError) as missing:
        _restored(tmp_path, _objects((3, 2), ema=True))
    for error in (shape.value, missing.value):
        assert isinstance(error, EffdrError) and not isinstance(error, AssertionError)
        message = str(error)
        assert "\n" not in message and message.startswith(f"{tmp_path}/checkpoints/ckpt-2: ")
    assert "(3, 2)" in str(shape.value) and "(3, 4)" in str(shape.value)
    assert "it holds no ema" in str(missing.value)
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-2")


# ---------------------------------------------------------------------------------------------
# A checkpoint that does not read


def _folder(where: str, tmp_path) -> str:
    return str(tmp_path) if where == "local" else f"ram://resume-{uuid.uuid4().hex}"


@pytest.mark.parametrize("where", ["local", "ram"])
@pytest.mark.parametrize("damage", ["index truncated", "index missing", "data truncated"])
def test_the_newest_checkpoint_that_reads_is_restored(tmp_path, capsys, where, damage):
    folder = _folder(where, tmp_path)
    tracked = _objects()
    checkpoints = _save(folder, tracked, 2, 1.0)
    for step in (4, 6):
        for w in tracked["model"].weights:
            w.assign(tf.fill(w.shape, float(step)))
        tracked["step"].assign(step)
        checkpoints.save(step)
    bad = f"{folder}/checkpoints/ckpt-6"
    index, data_file = read(f"{bad}.index"), read(bad + DATA_FILE)
    if damage == "index truncated":
        index = truncate(f"{bad}.index", 0.3)
    elif damage == "index missing":
        tf.io.gfile.remove(f"{bad}.index")
    else:
        data_file = truncate(bad + DATA_FILE, 0.9)
    capsys.readouterr()

    fresh = _objects()
    with Records(checkpointing.__name__) as logged:
        checkpoints, step = _restored(folder, fresh)
    assert step == 4 and all(np.all(w.numpy() == 4.0) for w in fresh["model"].weights)
    out = capsys.readouterr().out
    warned = lines(out, "warning:")
    assert len(warned) == 1 and f"checkpoint {bad} cannot be read" in warned[0], out
    assert logged.records == [warned[0]]
    assert lines(out, "resuming from step 4 ")

    moved = f"{folder}/checkpoints/corrupt/ckpt-6"
    assert read(moved + DATA_FILE) == data_file
    if damage == "index missing":
        assert not tf.io.gfile.exists(f"{moved}.index")
    else:
        assert read(f"{moved}.index") == index
    assert not tf.io.gfile.glob(f"{bad}.*")
    state = tf.train.get_checkpoint_state(f"{folder}/checkpoints")
    assert [p.rsplit("/", 1)[1] for p in state.all_model_checkpoint_paths] == ["ckpt-2", "ckpt-4"]

    # A later save of the same number does not meet the set-aside files.
    fresh["step"].assign(6)
    checkpoints.save(6)
    assert tf.train.latest_checkpoint(f"{folder}/checkpoints") == bad
    assert read(moved + DATA_FILE) == data_file
    _, again = _restored(folder, _objects())
    assert again == 6 and not lines(capsys.readouterr().out, "warning:")


def test_a_half_restored_checkpoint_does_not_leak_into_the_fallback(tmp_path, capsys, monkeypatch):
    """A restore that fails after assigning some values (variables on several devices restore
    in several ops) leaves them behind; the fallback overwrites every one of them, and the loss
    scale, absent from the older checkpoint, is fresh again."""
    _save(tmp_path, _objects(), 2, 1.0)
    newer = _objects(loss_scale=True)
    newer["loss_scale"].scale.assign(512.0)
    newer["loss_scale"].good_steps.assign(17)
    _save(tmp_path, newer, 4, 9.0)

    real = tf.train.Checkpoint.restore

    def half_then_fail(self, save_path, options=None):
        if save_path.endswith("ckpt-4"):
            real(self, save_path, options).expect_partial()  # every value, then the failure
            raise tf.errors.DataLossError(None, None, "Checksum does not match")
        return real(self, save_path, options)

    monkeypatch.setattr(tf.train.Checkpoint, "restore", half_then_fail)
    tracked = _objects(loss_scale=True)
    _, step = _restored(tmp_path, tracked)
    assert step == 2
    assert all(np.all(w.numpy() == 1.0) for w in tracked["model"].weights)
    assert float(tracked["loss_scale"].scale.numpy()) == 2.0**15
    assert int(tracked["loss_scale"].good_steps.numpy()) == 0
    warned = lines(capsys.readouterr().out, "warning:")
    assert len(warned) == 1 and "ckpt-4 cannot be read (Checksum does not match)" in warned[0]


@pytest.mark.parametrize("where", ["local", "ram"])
def test_a_truncated_latest_checkpoint_resumes_from_the_one_before(
    data, two_epochs, tmp_path, capsys, monkeypatch, where
):
    run = str(tmp_path / "run") if where == "local" else f"{_folder(where, tmp_path)}/run"
    copy_run(two_epochs, run)
    bad = f"{run}/checkpoints/ckpt-8"
    index = read(f"{bad}.index")
    left = truncate(bad + DATA_FILE)
    previous = f"{run}/checkpoints/ckpt-6"

    # Right after the restore: every value is ckpt-6's (restoring it again changes nothing).
    unchanged = []
    real = checkpointing.Checkpoints.restore

    def restore_and_compare(self, step_variable):
        step = real(self, step_variable)
        state = [v for k in ("model", "optimizer") for v in self.tracked[k].variables]
        state += list(self.tracked["ema"]) + [self.tracked["step"]]
        values = [v.numpy().copy() for v in state]
        self.checkpoint.restore(previous).assert_existing_objects_matched()
        pairs = zip(values, state, strict=True)
        unchanged.append(all(np.array_equal(a, v.numpy()) for a, v in pairs))
        return step

    monkeypatch.setattr(checkpointing.Checkpoints, "restore", restore_and_compare)
    capsys.readouterr()
    with Records(checkpointing.__name__) as logged:
        loop.train(config(data, 2), run, progress=False)
    out = capsys.readouterr().out
    assert unchanged == [True]
    assert lines(out, "resuming from step") == [f"resuming from step 6 ({previous})"]
    warned = lines(out, "warning:")
    assert len(warned) == 1, out
    short = "Read less bytes" if where == "local" else "a data file shorter than its index"
    assert warned[0].startswith(f"warning: checkpoint {bad} cannot be read ({short}")
    assert logged.records == warned
    # The bytes are kept aside; the run saved a new ckpt-8 that reads.
    assert read(f"{run}/checkpoints/corrupt/ckpt-8{DATA_FILE}") == left
    assert read(f"{run}/checkpoints/corrupt/ckpt-8.index") == index
    assert tf.train.latest_checkpoint(f"{run}/checkpoints") == bad
    reader = tf.compat.v1.train.NewCheckpointReader(bad)
    assert reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE") == 8
    assert len(learning_rates(run)) == 3  # epoch 2's row again, from the resumed run


def test_no_readable_checkpoint_is_one_error_line(data, two_epochs, tmp_path):
    run = copy_run(two_epochs, str(tmp_path / "run"))
    for step in (4, 6, 8):
        truncate(f"{run}/checkpoints/ckpt-{step}{DATA_FILE}")
    before = {p: read(p) for p in tf.io.gfile.glob(f"{run}/*") if not tf.io.gfile.isdir(p)}
    checkpoints = {p: read(p) for p in tf.io.gfile.glob(f"{run}/checkpoints/*")}

    result = run_command(
        "train.py", f"--config={TINY_CONFIG}", f"--data_dir={data}", f"--model_dir={run}",
        *SCHEDULE_FLAGS,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    errors = lines(result.stderr, "error: ")
    assert len(errors) == 1, result.stderr[-2000:]
    assert errors[0].startswith(f"error: {run}/checkpoints: no checkpoint reads (ckpt-4, ")
    assert "Traceback" not in result.stderr
    assert not lines(result.stdout + result.stderr, "warning: checkpoint")
    assert not lines(result.stdout, "resuming")
    # Nothing moved, nothing rewritten.
    assert {p: read(p) for p in tf.io.gfile.glob(f"{run}/checkpoints/*")} == checkpoints
    assert {p: read(p) for p in before} == before
