"""Training: real steps, strategies, resumption, schedules, EMA, guard rails."""

import glob
import json
import signal
import socket
import subprocess
import sys
import time

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.metrics import cohen_kappa_score

from effdr_tf import models
from effdr_tf.errors import EffdrError
from effdr_tf.evaluation import metrics
from effdr_tf.training import loop, recipes
from effdr_tf.training import step as step_lib
from tests.conftest import REPO, run_command
from tests.test_pipeline import build_tiny, default

TINY_CONFIG = str(REPO / "tests" / "tiny_config.py")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """Noisy 32-px images whose mean colour is the grade: learnable in a few dozen steps."""
    out = tmp_path_factory.mktemp("tiny")
    build_tiny(out, {"train": [24, 16, 16, 12, 12], "validation": [4, 4, 4, 4, 4]}, textured=True)
    return out


def tiny_config(data_dir, **overrides):
    sys.path.insert(0, str(REPO / "tests"))
    import tiny_config as tiny

    config = tiny.get_config()
    config.data.data_dir = str(data_dir)
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        config[section][key] = value
    return config


def test_loss_decreases_and_evaluation_sees_the_ema_weights(tiny_data, tmp_path):
    config = tiny_config(
        tiny_data,
        data__batch_size=16,
        train__learning_rate=3e-4,
        train__ema_decay=0.5,
        model__dropout_rate=0.0,
        model__drop_connect_rate=0.0,
    )
    trainer = loop.Trainer(config, str(tmp_path), tf.distribute.get_strategy(), progress=False)
    trainer._refresh_trainability(0)
    # Mean loss over blocks of 8 steps: single batches of 16 are too noisy to compare.
    losses = [float(trainer._train_fn(trainer.iterator, tf.constant(8))["loss"]) for _ in range(5)]
    assert int(trainer.step.numpy()) == 40
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.6 * losses[0], losses

    seen = {}
    original = trainer.predict_split

    def spy(split):
        seen["weights"] = [w.numpy().copy() for w in trainer.model.weights]
        return original(split)

    trainer.predict_split = spy
    training_weights = [w.numpy().copy() for w in trainer.model.weights]
    trainer.evaluate("validation")
    for during, average in zip(seen["weights"], trainer.ema.averages, strict=True):
        np.testing.assert_array_equal(during, average.numpy())
    for after, before in zip(trainer.model.weights, training_weights, strict=True):
        np.testing.assert_array_equal(after.numpy(), before)
    assert any(
        not np.array_equal(a, b) for a, b in zip(seen["weights"], training_weights, strict=True)
    )


def test_run_writes_every_output(tiny_data, tmp_path):
    config = tiny_config(tiny_data, train__export=True)
    history = loop.train(config, str(tmp_path), progress=False)
    assert {"train_loss", "val_kappa", "val_accuracy"} <= set(history)
    for name in (
        "config.json",
        "best.weights.h5",
        "log.csv",
        "export/model.keras",
        "export/saved_model/saved_model.pb",
        "checkpoints/checkpoint",
    ):
        assert (tmp_path / name).exists(), name
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,step,learning_rate") and len(rows) == 1 + config.train.epochs
    assert json.loads((tmp_path / "config.json").read_text())["variant"] == "tiny"
    events = glob.glob(str(tmp_path / "eval" / "events.out.tfevents.*"))
    tags = set()
    for event in tf.compat.v1.train.summary_iterator(events[0]):
        tags |= {v.tag for v in event.summary.value}
    assert {"kappa", "confusion_matrix"} <= tags and any(t.startswith("pr_curve/") for t in tags)
    exported = keras.saving.load_model(tmp_path / "export" / "model.keras")
    assert exported.output_shape == (None, 5)


def test_learning_rate_follows_the_reference_formula():
    config = default.get_config("b0")
    default.paper_imagenet_recipe(config)
    steps_per_epoch, batch = 100, 4096
    schedule = recipes.make_schedule(config.train, steps_per_epoch, batch)
    base = 0.016 * batch / 256  # 0.256
    warmup, decay_steps = 5 * steps_per_epoch, int(round(2.4 * steps_per_epoch))
    for step in (0, 1, 250, 499, 500, 700, 10_000, 34_999):
        want = base * step / warmup if step < warmup else base * 0.97 ** (step // decay_steps)
        assert float(schedule(step)) == pytest.approx(want, rel=1e-5), step
    schedule.scale.assign(0.5)
    assert float(schedule(700)) == pytest.approx(0.5 * base * 0.97**2, rel=1e-6)


def test_ema_follows_the_warmup_ramp():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, use_bias=False)])
    ema = step_lib.EMA(model, decay=0.9999)
    w0 = model.weights[0].numpy().copy()
    model.weights[0].assign(w0 + 1.0)
    ema.update(tf.constant(1))
    decay = min(0.9999, 2 / 11)
    np.testing.assert_allclose(
        ema.averages[0].numpy(), decay * w0 + (1 - decay) * (w0 + 1.0), rtol=1e-6
    )
    averaged = ema.averages[0].numpy().copy()
    ema.swap()
    np.testing.assert_array_equal(model.weights[0].numpy(), averaged)
    ema.swap()
    np.testing.assert_array_equal(model.weights[0].numpy(), w0 + 1.0)


@pytest.mark.parametrize("case", ["random", "perfect", "reversed", "one_class"])
def test_kappa_equals_sklearn(case):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, 500)
    predicted = {
        "random": rng.integers(0, 5, 500),
        "perfect": y,
        "reversed": 4 - y,
        "one_class": np.zeros_like(y),
    }[case]
    want = cohen_kappa_score(y, predicted, weights="quadratic")
    confusion = metrics.confusion_matrix(y, predicted, 5)
    assert metrics.quadratic_weighted_kappa(confusion) == pytest.approx(want, abs=1e-9)
    metric = metrics.QuadraticWeightedKappa(5)
    metric.update_state(y, np.eye(5)[predicted])
    assert float(metric.result()) == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_jit_compiled_step_with_mixed_precision(tiny_data, tmp_path, policy):
    """The step compiles with XLA in both low precisions; under float16 that includes the
    loss scaling and both its branches (an overflow forced by a huge scale, then a step)."""
    config = tiny_config(
        tiny_data,
        train__jit_compile=True,
        train__mixed_precision=policy,
        train__epochs=1,
        train__steps_per_epoch=2,
    )
    try:
        trainer = loop.Trainer(config, str(tmp_path), tf.distribute.get_strategy(), progress=False)
        low = policy.removeprefix("mixed_")
        assert trainer.model.get_layer("top_conv").compute_dtype == low
        trainer._refresh_trainability(0)
        before = [v.numpy().copy() for v in trainer.model.trainable_variables]

        def changed():
            now = [v.numpy() for v in trainer.model.trainable_variables]
            return any(not np.array_equal(a, b) for a, b in zip(before, now, strict=True))

        if trainer.loss_scale is not None:
            trainer.loss_scale.scale.assign(1e30)  # float16 gradients overflow: skipped
            figures = trainer._train_fn(trainer.iterator, tf.constant(1))
            assert int(figures["skipped"]) == 1 and not changed()
            assert float(trainer.loss_scale.scale.numpy()) == pytest.approx(5e29, rel=1e-6)
            trainer.loss_scale.scale.assign(1.0)
        figures = trainer._train_fn(trainer.iterator, tf.constant(1))
        assert np.isfinite(float(figures["loss"])) and int(figures["confusion"].numpy().sum()) == 8
        assert int(figures["skipped"]) == 0 and changed()
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_divergence_stops_without_saving(tiny_data, tmp_path):
    config = tiny_config(
        tiny_data,
        train__optimizer="sgd",
        train__learning_rate=1e12,
        train__checkpoint_every_steps=1000,
    )
    with pytest.raises(loop.TrainingDivergedError, match=r"at step \d+; stopped without saving"):
        loop.train(config, str(tmp_path), progress=False)
    assert not glob.glob(str(tmp_path / "checkpoints" / "ckpt-*"))


def test_backbone_freezing_then_unfreezing_by_stage(tiny_data, tmp_path):
    config = tiny_config(
        tiny_data, train__freeze_backbone_epochs=1, train__unfreeze_stages_per_epoch=3
    )
    model = loop.build_model(config, loop.check_config(config, tf.distribute.get_strategy()))
    assert loop.trainable_for_epoch(model, config, 0) == []
    assert [v.path for v in model.trainable_variables] == ["predictions/kernel", "predictions/bias"]
    assert loop.trainable_for_epoch(model, config, 1) == ["block6", "block7", "top"]
    assert model.get_layer("block7a_project_conv").trainable
    assert not model.get_layer("block5a_project_conv").trainable
    assert len(loop.trainable_for_epoch(model, config, 3)) == 9  # everything


def test_bad_settings_fail_before_writing(tiny_data, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(EffdrError, match="unknown EfficientNet variant"):
        loop.train(_with_variant(tiny_config(tiny_data), "b42"), str(out))
    with pytest.raises(EffdrError, match="--strategy=gpu"):
        loop.train(tiny_config(tiny_data), str(out), strategy="gpu")
    with pytest.raises(EffdrError, match="manifest.json: not found"):
        loop.train(tiny_config(tmp_path / "empty"), str(out))
    with pytest.raises(EffdrError, match="corrects the class imbalance twice"):
        loop.train(
            tiny_config(tiny_data, balance__target="uniform", train__class_weights=(1.0,) * 5),
            str(out),
        )
    assert not out.exists()


def test_a_first_start_that_fails_on_its_weights_leaves_no_config_behind(tiny_data, tmp_path):
    """The corrected command must not be refused as "a run with another config"."""
    out = tmp_path / "run"
    missing = tmp_path / "no_such.weights.h5"
    with pytest.raises(EffdrError, match="no_such.weights.h5"):
        loop.train(tiny_config(tiny_data, model__weights=str(missing), train__epochs=1), str(out))
    assert not (out / "config.json").exists()
    loop.train(tiny_config(tiny_data, train__epochs=1), str(out), progress=False)
    assert (out / "config.json").exists()


def _with_variant(config, variant):
    config.variant = variant
    return config


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config.train.no_such_key=1"], "no_such_key"),
        (["--variant=b42"], "unknown EfficientNet variant"),
    ],
)
def test_command_line_errors_exit_2(tiny_data, tmp_path, args, message):
    out = tmp_path / "run"
    result = run_command(
        "train.py",
        f"--config={TINY_CONFIG}",
        f"--data_dir={tiny_data}",
        f"--model_dir={out}",
        *args,
    )
    assert result.returncode == 2, result.stderr[-1500:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-1500:]
    assert "Traceback" not in result.stderr
    assert not out.exists()


SHIPPED_RECIPES = ["default.py", "kaggle_dr.py:b5", "kaggle_dr.py:b5,paper", "kaggle_dr.py:b5,tpu",
                   "kaggle_dr.py:b5,paper,tpu", "kaggle_dr.py:b5,sampler,randaugment",
                   "aptos2019.py:b3", "aptos2019.py:b3,randaugment", "cifar.py:b0",
                   "cifar.py:b0,transfer", "cifar.py:b5,transfer,cifar100",
                   "cifar.py:b0,randaugment,flip", "demo.py"]  # fmt: skip


def test_every_shipped_config_loads_as_train_py_loads_it():
    """Each recipe file loads through the config flag, as train.py's --config does (they
    import configs/default.py), and names a variant the scaling table has."""
    from absl import flags
    from ml_collections import config_flags

    for recipe in SHIPPED_RECIPES:
        values = flags.FlagValues()
        config_flags.DEFINE_config_file("config", flag_values=values)
        values(["train.py", f"--config={REPO / 'configs' / recipe}"])
        config = values.config
        assert config.variant in models.VARIANTS, recipe
        assert config.train.epochs > 0 and config.data.batch_size > 0, recipe


def test_the_readme_training_command_gets_to_the_data_check(tmp_path):
    missing = tmp_path / "no_such_data"
    result = run_command(
        "train.py", "--config=configs/kaggle_dr.py:b5", f"--data_dir={missing}",
        f"--model_dir={tmp_path / 'run'}",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-1500:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and str(missing) in errors[0], result.stderr[-1500:]


def _final_weights(path):
    with h5py.File(path) as f:
        arrays = []
        f.visititems(
            lambda _, obj: arrays.append(obj[()]) if isinstance(obj, h5py.Dataset) else None
        )
    return arrays


def test_kill_9_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path):
    data = tmp_path / "data"
    build_tiny(data, {"train": [24, 16, 16, 12, 12]})
    overrides = [
        "--config.train.epochs=1",
        "--config.train.steps_per_epoch=16",
        "--config.train.checkpoint_every_steps=2",
        "--config.train.deterministic=True",
        "--config.train.export=False",
    ]
    command = [
        sys.executable,
        "train.py",
        f"--config={TINY_CONFIG}",
        f"--data_dir={data}",
        *overrides,
    ]
    # The uninterrupted run and the one to be killed run side by side to save time.
    clean = subprocess.Popen(
        [*command, f"--model_dir={tmp_path / 'clean'}"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "clean.log", "w"),  # noqa: SIM115 (closed with the process)
    )
    killed_dir = tmp_path / "killed"
    process = subprocess.Popen(
        [*command, f"--model_dir={killed_dir}"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not glob.glob(str(killed_dir / "checkpoints" / "ckpt-4.*")):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed_dir / "best.weights.h5").exists()  # it really was interrupted
    assert clean.wait(timeout=600) == 0, (tmp_path / "clean.log").read_text()[-2000:]

    resumed = subprocess.run(
        [*command, f"--model_dir={killed_dir}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    step = int(resumed.stdout.split("resuming from step ")[1].split()[0])
    assert 2 <= step < 16  # ckpt-4 may have been cut short by the kill
    want = _final_weights(tmp_path / "clean" / "best.weights.h5")
    got = _final_weights(killed_dir / "best.weights.h5")
    assert len(want) == len(got)
    for a, b in zip(want, got, strict=True):
        np.testing.assert_array_equal(a, b)  # bit-exact: deterministic runs one thread per op


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.parametrize(
    "tf_config, message",
    [
        (None, "needs TF_CONFIG"),
        ("{not json", "TF_CONFIG is not valid"),
        ('{"cluster": {"worker": ["localhost:1"]}}', "TF_CONFIG is not valid"),
    ],
)
def test_multi_worker_without_a_usable_tf_config_is_a_clear_error(monkeypatch, tf_config, message):
    from effdr_tf.training import distribute

    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(EffdrError, match=message):
        distribute.make_strategy("multi_worker")


def test_log_lines_print_small_figures_with_their_digits():
    # A fine-tuning learning rate of 5e-05 printed as 0.0000 reads as "not training".
    from effdr_tf.training.loop import figure

    assert figure(5e-05) == "5e-05" and figure(0.0003) == "0.0003"
    assert figure(0.8123456) == "0.8123" and figure(0.0) == "0.0000" and figure(12.5) == "12.5000"
