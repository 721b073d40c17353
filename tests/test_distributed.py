"""Training where users run it: several replicas in float16, several workers, TPU connection,
host loops, exports of mixed-precision runs, and model_dir/data_dir on a bucket (ram://)."""

import json
import math
import os
import subprocess
import sys
from unittest import mock

import keras
import numpy as np
import pytest
import tensorflow as tf

from effdr_tf import fileio
from effdr_tf.errors import EffdrError
from effdr_tf.training import distribute, loop
from tests.conftest import REPO, run_command
from tests.test_pipeline import build_tiny
from tests.test_training import TINY_CONFIG, _free_ports, tiny_config


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    build_tiny(out, {"train": [24, 16, 16, 12, 12], "validation": [4, 4, 4, 4, 4]}, textured=True)
    return out


def _result(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, stdout[-2000:]
    return json.loads(lines[-1][len("RESULT ") :])


def _check_overflow(found):
    assert found["first_step_skipped"] == 0
    assert found["bad_step_skipped"] == 1
    assert found["weights_unchanged"] and found["slots_unchanged"] and found["ema_unchanged"]
    assert found["scale_after"] == [s / 2 for s in found["scale_before"]]  # halved once
    assert found["scale_recovered"] == found["scale_after"]
    assert found["next_step_trains"] and found["replicas_agree"]
    assert (found["step"], found["iterations"]) == (3, 2)  # 3 batches, 2 updates


def test_float16_on_two_replicas(tiny_data, tmp_path):
    """An overflow on one replica only is skipped by both; two replicas train as one."""
    result = run_command(
        "tests/two_replicas.py", str(tiny_data), str(tmp_path), "overflow", "equivalence", "jit",
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    found = _result(result.stdout)
    _check_overflow(found["overflow"])
    assert found["overflow"]["local_copies"] == 2

    same = found["equivalence"]
    assert same["policy"] == "float16"
    assert same["skipped"][0] == same["skipped"][1]  # the same natural overflows at 2**15
    # float16 tolerance: one ulp is 1e-3 relative, and a last-bit difference in the
    # synchronised batch statistics moves float16 roundings downstream (measured: 0.15 % on the
    # loss at equal weights, 0.5 % after three SGD steps; float32 runs agree to 1e-4).
    np.testing.assert_allclose(same["losses_one"], same["losses_two"], rtol=1e-2, err_msg=same)
    # Measured against how far the weights and the averages moved: 3.7 % and 3.0 % here in
    # float16, against 0.03 % and 0.02 % in float32 (test_two_float32_replicas_step_as_one).
    assert same["update_relative"] < 0.1 and same["ema_update_relative"] < 0.1, same
    assert "needs GPUs" in found["jit"]


def test_float16_heads_on_two_replicas(tiny_data, tmp_path):
    """The regression and ordinal heads' losses through the same step, and a student's soft
    targets (a process of its own: the longest check, beside the one above)."""
    result = run_command(
        "tests/two_replicas.py", str(tiny_data), str(tmp_path), "heads", timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = _result(result.stdout)
    for head in ("regression", "ordinal", "soft"):
        same = found[f"equivalence_{head}"]
        assert same["policy"] == "float16" and same["skipped"] == [0, 0], (head, same)
        # Measured after three steps (two run here): within 0.02 % (regression), 0.03 %
        # (ordinal) and 0.2 % (soft targets).
        np.testing.assert_allclose(same["losses_one"], same["losses_two"], rtol=2e-2, err_msg=head)
        assert same["update_relative"] < 0.1, (head, same)


def test_two_float32_replicas_step_as_one(tiny_data, tmp_path):
    """The whole step (loss, all-reduce, per-device update, per-device EMA) on two replicas
    against one device on the same global batches. A separate process from the float16 checks:
    strategies made one after another in a process share collective keys."""
    result = run_command(
        "tests/two_replicas.py", str(tiny_data), str(tmp_path), "equivalence32", timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    exact = _result(result.stdout)["equivalence32"]
    assert exact["skipped"] == [0, 0] and exact["policy"] == "float32"
    # Equal weights at step 1; after three SGD steps at a large rate, 1.4e-4 measured.
    assert exact["losses_one"][0] == pytest.approx(exact["losses_two"][0], rel=1e-5)
    np.testing.assert_allclose(exact["losses_one"], exact["losses_two"], rtol=1e-3)
    # Keras' synchronised batch norm takes the variance as E[x^2] - E[x]^2 from all-reduced
    # sums; summed in another order, last-bit differences grow through the cancellation.
    assert exact["update_relative"] < 2e-3 and exact["ema_update_relative"] < 2e-3, exact


def _workers(tmp_path, args_for, *, timeout=300):
    """Starts two localhost workers, each with its own temporary folder (tmp_path/tmp{i});
    returns [(returncode, stdout, stderr)]."""
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    processes = []
    for index in range(2):
        scratch = tmp_path / f"tmp{index}"
        scratch.mkdir(exist_ok=True)
        env = {
            **os.environ,
            "TF_CONFIG": json.dumps(
                {"cluster": cluster, "task": {"type": "worker", "index": index}}
            ),
            "TMPDIR": str(scratch),
        }
        processes.append(
            subprocess.Popen(
                [sys.executable, *args_for(index)],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = []
    try:
        for p in processes:
            out, err = p.communicate(timeout=timeout)  # a hang fails here
            results.append((p.returncode, out, err))
    finally:
        for p in processes:
            p.kill()
    return results


def test_float16_overflow_on_one_worker_is_skipped_by_both(tiny_data, tmp_path):
    results = _workers(
        tmp_path, lambda i: ["tests/two_replicas.py", str(tiny_data), str(tmp_path), "overflow"]
    )
    found = []
    for code, out, err in results:
        assert code == 0, err[-3000:]
        found.append(_result(out)["overflow"])
        _check_overflow(found[-1])
    assert found[0]["digest"] == found[1]["digest"]  # both workers hold the same weights


def test_workers_train_together_then_a_worker_restored_elsewhere_stops_them(tiny_data, tmp_path):
    model_dir = tmp_path / "run"

    def command(directory):
        return [
            "train.py", f"--config={TINY_CONFIG}", f"--data_dir={tiny_data}",
            f"--model_dir={directory}", "--strategy=multi_worker", "--config.train.epochs=1",
            "--config.train.steps_per_epoch=3", "--config.train.export=False",
        ]  # fmt: skip

    results = _workers(tmp_path, lambda i: command(model_dir), timeout=600)
    for code, _, err in results:
        assert code == 0, err[-3000:]
    losses = [out.split("train_loss=")[1].split()[0] for _, out, _ in results]
    assert losses[0] == losses[1]
    assert (model_dir / "checkpoints" / "ckpt-3.index").exists()
    assert sorted(os.listdir(model_dir)) == sorted(
        ["best.weights.h5", "checkpoints", "config.json", "eval", "log.csv", "train"]
    )
    # Worker 1 wrote its checkpoints to a scratch folder and removed it at the end.
    assert not [n for n in os.listdir(tmp_path / "tmp1") if n.startswith("effdr_worker")]

    # Worker 1 now sees another model_dir (as when model_dir is local to each machine): it
    # starts at 0 while the chief resumes at 3. Both stop with one line, exit 2, no hang.
    results = _workers(
        tmp_path, lambda i: command(model_dir if i == 0 else tmp_path / "elsewhere"), timeout=300
    )
    for code, _, err in results:
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert code == 2, err[-3000:]
        assert len(errors) == 1 and "must be storage that every worker reads" in errors[0]
        assert "Traceback" not in err


def test_tpu_without_a_name_asks_for_the_local_tpu():
    seen = {}

    class Resolver:
        def __init__(self, tpu=None):
            seen["tpu"] = tpu
            raise ValueError("no TPU here")

    with mock.patch.object(tf.distribute.cluster_resolver, "TPUClusterResolver", Resolver):
        with pytest.raises(
            EffdrError,
            match=r"cannot reach the local TPU \(give --tpu=NAME elsewhere\): no TPU here",
        ):
            distribute.make_strategy("tpu")
        assert seen["tpu"] == "local"
        seen.clear()
        # A TPU VM reads and writes its own disk: local paths go on to the resolver.
        with pytest.raises(EffdrError, match="cannot reach the local TPU"):
            distribute.make_strategy("tpu", model_dir="/run", data_dir="/data")
        assert seen["tpu"] == "local"
        with pytest.raises(EffdrError, match="cannot reach --tpu=node-1: no TPU here"):
            distribute.make_strategy("tpu", "node-1")
        assert seen["tpu"] == "node-1"


def _strategy(kind: str, replicas: int, machines: int = 1):
    """A stand-in for a strategy of ``kind`` with ``replicas`` over ``machines``."""
    if kind == "default":
        return tf.distribute.get_strategy()
    spec = {
        "mirrored": tf.distribute.MirroredStrategy,
        "multi_worker": tf.distribute.MultiWorkerMirroredStrategy,
        "tpu": tf.distribute.TPUStrategy,
    }[kind]
    strategy = mock.Mock(spec=spec, num_replicas_in_sync=replicas)
    if kind == "mirrored":
        strategy.cluster_resolver = None
    elif kind == "multi_worker":
        strategy.cluster_resolver.cluster_spec.return_value.as_dict.return_value = {
            "worker": [f"host{i}:12345" for i in range(machines)]
        }
    return strategy


# (strategy, GPUs on this machine, replicas, machines) -> unset jit_compile, steps per
# execution, sync batch norm, and what jit_compile=True gives (a bool, or the error it raises).
PER_DEVICE = {
    "CPU": (("default", 0, 1, 1), (False, 1, False, True)),
    "two CPU replicas": (("mirrored", 0, 2, 1), (False, 1, True, "needs GPUs")),
    "one GPU": (("default", 1, 1, 1), (True, 1, False, True)),
    "four GPUs": (("mirrored", 4, 4, 1), (True, 1, True, True)),
    "one worker, four GPUs": (("multi_worker", 4, 4, 1), (True, 1, True, True)),
    "two machines of four GPUs": (
        ("multi_worker", 4, 8, 2),
        (False, 1, False, "across several machines"),
    ),
    "two CPU machines": (("multi_worker", 0, 2, 2), (False, 1, False, "across several machines")),
    "TPU": (("tpu", 0, 8, 1), (False, distribute.TPU_STEPS_PER_EXECUTION, True, False)),
    "one TPU core": (("tpu", 0, 1, 1), (False, distribute.TPU_STEPS_PER_EXECUTION, False, False)),
}


@pytest.mark.parametrize("where", PER_DEVICE)
def test_per_device_defaults(where):
    (kind, gpus, replicas, machines), (jit, steps, sync, jit_on) = PER_DEVICE[where]
    strategy = _strategy(kind, replicas, machines)

    def logical_devices(device_type=None):
        return [mock.Mock(device_type="GPU")] * gpus if device_type == "GPU" else []

    with mock.patch.object(tf.config, "list_logical_devices", logical_devices):
        assert distribute.jit_compile(None, strategy) is jit
        assert distribute.steps_per_execution(0, strategy) == steps
        assert distribute.sync_batch_norm(None, strategy) is sync
        if isinstance(jit_on, str):
            with pytest.raises(EffdrError, match=jit_on) as refused:
                distribute.jit_compile(True, strategy)
            assert "\n" not in str(refused.value)
        else:
            assert distribute.jit_compile(True, strategy) is jit_on
        # What is set is kept (jit_compile: off always runs).
        assert distribute.jit_compile(False, strategy) is False
        assert distribute.steps_per_execution(7, strategy) == 7
        assert distribute.sync_batch_norm(True, strategy) is True
        assert distribute.sync_batch_norm(False, strategy) is False


def test_few_images_per_replica_warns(tiny_data, caplog):
    config = tiny_config(tiny_data, data__batch_size=2)
    with caplog.at_level("WARNING"):
        loop.check_config(config, tf.distribute.get_strategy())
    assert "gives each replica 2 images" in caplog.text


def test_a_host_loop_of_n_steps_equals_n_single_steps(tiny_data, tmp_path):
    def trained(name, calls):
        config = tiny_config(
            tiny_data, train__deterministic=True, data__batch_size=8,
            model__dropout_rate=0.0, model__drop_connect_rate=0.0, train__optimizer="sgd",
        )  # fmt: skip
        trainer = loop.Trainer(config, str(tmp_path / name), tf.distribute.get_strategy(), False)
        trainer._refresh_trainability(0)
        start = trainer.model.get_weights()
        losses = [float(trainer._train_fn(trainer.iterator, tf.constant(n))["loss"]) for n in calls]
        return start, trainer.model.get_weights(), losses, int(trainer.step.numpy())

    start, loop_weights, loop_losses, loop_step = trained("loop", [3])
    _, single_weights, single_losses, single_step = trained("single", [1, 1, 1])
    assert loop_step == single_step == 3
    # Equal up to float32 rounding (grappler optimises a loop body and a single step
    # differently; kernels are multi-threaded): measured against the size of the update. SGD,
    # because Adam turns rounding noise in gradients that are zero in exact arithmetic (the
    # beta of a batch norm feeding another batch norm) into learning-rate-sized steps.
    assert loop_losses[0] == pytest.approx(np.mean(single_losses), rel=1e-4)

    def flat(arrays):
        return np.concatenate([a.ravel() for a in arrays]).astype(np.float64)

    moved = np.linalg.norm(flat(single_weights) - flat(start))
    assert moved > 0
    assert np.linalg.norm(flat(loop_weights) - flat(single_weights)) < 1e-3 * moved


def test_evaluation_traces_once_per_run(tiny_data, tmp_path):
    # 20 validation images in batches of 16: a full batch and a padded one.
    config = tiny_config(tiny_data, train__epochs=3)
    trainer = loop.Trainer(config, str(tmp_path), tf.distribute.get_strategy(), progress=False)
    trainer.run()
    assert trainer.eval_traces == 1
    labels, probs = trainer.predict_split("validation")
    assert len(labels) == 20 and probs.shape == (20, 5) and (labels >= 0).all()
    assert trainer.eval_traces == 1


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_runs_export_float32(tiny_data, tmp_path, policy):
    from effdr_tf.serving import export

    config = tiny_config(
        tiny_data, train__mixed_precision=policy, train__export=True, train__epochs=1
    )
    try:
        loop.train(config, str(tmp_path), progress=False)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model = keras.saving.load_model(tmp_path / "export" / "model.keras")
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
    assert not any(getattr(layer, "synchronized", False) for layer in model.layers)
    report = export.export(str(tmp_path), check_images=8)
    assert report["float32"]["max_abs_diff"] < 1e-4
    assert report["float16"]["max_abs_diff"] < 1e-2
    assert report["int8"]["argmax_agreement"] >= 0.75
    assert report["saved_model"]["max_abs_diff"] < 1e-5


def test_train_eval_export_on_a_bucket(tmp_path):
    """data_dir, model_dir, eval's out and the builder's output_dir on ram://, TensorFlow's
    in-memory filesystem standing in for gs://."""
    from effdr_tf.evaluation import evaluate
    from effdr_tf.serving import export

    bucket = "ram://bucket-test"
    data_dir = f"{bucket}/tfrec"
    build_tiny(data_dir, {"train": [8, 8, 8, 8, 8], "validation": [4, 4, 4, 4, 4]})
    assert tf.io.gfile.exists(f"{data_dir}/manifest.json")
    model_dir = f"{bucket}/run"
    config = tiny_config(data_dir, train__export=True, train__epochs=1)
    loop.train(config, model_dir, progress=False)
    for name in ("config.json", "best.weights.h5", "log.csv", "export/model.keras",
                 "export/saved_model/saved_model.pb", "checkpoints/checkpoint"):  # fmt: skip
        assert tf.io.gfile.exists(f"{model_dir}/{name}"), name
    assert not tf.io.gfile.exists(f"{model_dir}/export/.tmp-saved_model")

    # Resuming reads the checkpoints back from the bucket.
    config.train.epochs = 1
    loop.train(config, model_dir, progress=False)

    out = f"{bucket}/eval"
    summary = evaluate.evaluate(
        model_dir, data_dir=data_dir, splits=["validation"], out_dir=out, bootstrap_rounds=10
    )
    assert summary["splits"]["validation"]["count"] == 20
    for name in ("metrics.json", "report.html", "predictions_validation.csv"):
        assert tf.io.gfile.exists(f"{out}/{name}"), name

    report = export.export(model_dir, ["saved_model", "float32"], check_images=4)
    assert report["float32"]["max_abs_diff"] < 1e-4
    assert tf.io.gfile.exists(f"{model_dir}/serving/saved_model_bytes/saved_model.pb")
    assert not os.path.exists(model_dir)  # nothing landed on local disk under that name


def test_replace_dir_on_a_bucket():
    target = "ram://replace/new"
    tmp = fileio.temporary_name(target)
    for path, text in ((f"{target}/old.txt", "old"), (f"{tmp}/a.txt", "a"),
                       (f"{tmp}/sub/b.txt", "b")):  # fmt: skip
        tf.io.gfile.makedirs(os.path.dirname(path))
        with tf.io.gfile.GFile(path, "w") as f:
            f.write(text)
    fileio.replace_dir(tmp, target)
    assert not tf.io.gfile.exists(f"{target}/old.txt")
    assert tf.io.gfile.GFile(f"{target}/sub/b.txt").read() == "b"
    assert tf.io.gfile.GFile(f"{target}/a.txt").read() == "a"
    assert not tf.io.gfile.exists(f"{tmp}/a.txt")


def test_tpu_recipes_fill_the_cores_and_scale_the_learning_rate():
    from configs import kaggle_dr
    from effdr_tf.training import recipes

    thesis, tpu = kaggle_dr.get_config("b5"), kaggle_dr.get_config("b5,tpu")
    assert tpu.data.batch_size == 64 and thesis.data.batch_size == 8
    assert tpu.train.mixed_precision == "mixed_bfloat16"
    # Adam: the thesis's 1e-4 at 8 images, times the square root of 64 / 8, after a warm-up.
    assert recipes.base_learning_rate(thesis.train, 8) == pytest.approx(1e-4)
    assert tpu.train.lr_scaling == "sqrt"
    assert recipes.base_learning_rate(tpu.train, 64) == pytest.approx(1e-4 * math.sqrt(64 / 8))
    assert thesis.train.warmup_epochs == 0 and tpu.train.warmup_epochs == 1.0
    schedule = recipes.make_schedule(tpu.train, steps_per_epoch=100, global_batch_size=64)
    peak = 1e-4 * math.sqrt(8)
    assert float(schedule(50)) == pytest.approx(peak / 2)  # half-way up the ramp
    assert float(schedule(150)) == pytest.approx(peak)  # a full epoch at the peak
    assert float(schedule(250)) == pytest.approx(peak / 2)  # the thesis's halving at epoch 2

    # The paper's recipe as published: RMSProp 0.016 per 256 images, linear, 5 warm-up epochs.
    paper, published = kaggle_dr.get_config("b5,paper,tpu"), kaggle_dr.get_config("b5,paper")
    assert paper.train.lr_scaling == published.train.lr_scaling == "linear"
    assert paper.train.learning_rate == published.train.learning_rate == 0.016
    assert paper.train.warmup_epochs == published.train.warmup_epochs == 5.0
    assert recipes.base_learning_rate(paper.train, 64) == pytest.approx(0.016 * 64 / 256)


def test_a_mixed_precision_model_file_is_scored_in_float32(tiny_data, tmp_path):
    """Runs exported before exports were float32: eval.py loads them as float32 models."""
    from effdr_tf import models
    from effdr_tf.evaluation import scoring

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = models.efficientnet("tiny", num_classes=5, input_shape=(32, 32, 3))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    (tmp_path / "export").mkdir()
    model.save(tmp_path / "export" / "model.keras")
    (tmp_path / "config.json").write_text(tiny_config(tiny_data).to_json())
    run = scoring.load_run(str(tmp_path))
    assert {layer.dtype_policy.name for layer in run.model.layers} == {"float32"}
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    want = np.asarray(model(x, training=False), np.float32)
    got = np.asarray(run.model(x, training=False))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=0.1)  # bfloat16 keeps 8 bits of mantissa


def test_learning_rate_scales_linearly_or_by_the_square_root_per_256_images():
    from effdr_tf.training import options, recipes

    train = tiny_config("unused").train
    train.learning_rate = 1e-3
    for scaling, at_1024 in (("linear", 4e-3), ("sqrt", 2e-3), ("none", 1e-3)):
        train.lr_scaling = scaling
        assert recipes.base_learning_rate(train, 256) == pytest.approx(1e-3)
        assert recipes.base_learning_rate(train, 1024) == pytest.approx(at_1024)
    config = tiny_config("unused", train__lr_scaling="sqrt")
    options.check(config)
    config.train.lr_scaling = "cube"
    with pytest.raises(EffdrError, match="train.lr_scaling='cube': choose one of linear, sqrt"):
        options.check(config)


@pytest.mark.parametrize(
    "optimizer, scaling, rate_at_64",
    [("sgd", "linear", 1e-3 * 64 / 32), ("rmsprop", "sqrt", 1e-3 * math.sqrt(64 / 32))],
)
def test_tpu_recipe_scales_sgd_linearly_and_rmsprop_by_the_square_root(
    optimizer, scaling, rate_at_64
):
    from configs import default
    from effdr_tf.training import recipes

    config = default.get_config()
    config.train.optimizer, config.train.learning_rate = optimizer, 1e-3
    config.train.schedule = "constant"
    assert config.data.batch_size == 32 and config.train.lr_scaling == "none"
    default.tpu_recipe(config)
    assert config.train.lr_scaling == scaling
    assert recipes.base_learning_rate(config.train, 64) == pytest.approx(rate_at_64)
    assert config.train.warmup_epochs == default.TPU_WARMUP_EPOCHS
    # A recipe's own warm-up stays; a step decay every epoch ends the ramp at half an epoch.
    config = default.get_config()
    config.train.warmup_epochs = 3.0
    assert default.tpu_recipe(config).train.warmup_epochs == 3.0
    config = default.get_config()
    config.train.schedule, config.train.decay_epochs = "step", 1.0
    assert default.tpu_recipe(config).train.warmup_epochs == 0.5


def _workers_and_chief(task, **cluster):
    cluster = cluster or {"worker": ["host1:12345", "host2:12345"]}
    return json.dumps({"cluster": cluster, "task": task})


@pytest.mark.parametrize(
    "tf_config, message",
    [
        (_workers_and_chief({"type": "worker", "index": 2}), "worker index 2 is not one of the 2"),
        (_workers_and_chief({"type": "worker", "index": -1}), "worker index -1 is not one of"),
        (_workers_and_chief({"type": "worker", "index": "0"}), "task index '0' is not a whole"),
        (_workers_and_chief({"type": "chief", "index": 0}), "needs cluster.chief with one"),
        (
            _workers_and_chief({"type": "chief", "index": 1}, chief=["c:1"], worker=["w:1"]),
            "chief index 1: the one chief is index 0",
        ),
        (
            _workers_and_chief({"type": "chief", "index": 0}, chief=["c:1", "c:2"], worker=[]),
            "needs cluster.chief with one address \\(it has 2\\)",
        ),
        (_workers_and_chief({"type": "ps", "index": 0}), "task type 'ps': choose worker or chief"),
        (_workers_and_chief({"type": "worker"}), "no 'index' entry"),
        ('{"cluster": ["host1:1"], "task": {"type": "worker", "index": 0}}', "not valid"),
    ],
)
def test_tf_config_with_a_task_outside_its_cluster_is_one_line(monkeypatch, tf_config, message):
    monkeypatch.setenv("TF_CONFIG", tf_config)
    with (
        mock.patch.object(tf.distribute, "MultiWorkerMirroredStrategy") as made,
        pytest.raises(EffdrError, match=message) as refused,
    ):
        distribute.make_strategy("multi_worker")
    assert str(refused.value).startswith("TF_CONFIG is not valid for multi-worker training")
    assert "\n" not in str(refused.value)
    made.assert_not_called()


@pytest.mark.parametrize(
    "tf_config",
    [
        _workers_and_chief({"type": "worker", "index": 0}),
        _workers_and_chief({"type": "worker", "index": 1}),
        _workers_and_chief({"type": "chief", "index": 0}, chief=["c:1"], worker=["w:1"]),
        _workers_and_chief({"type": "worker", "index": 0}, chief=["c:1"], worker=["w:1"]),
    ],
)
def test_tf_config_naming_a_task_of_its_cluster_makes_the_strategy(monkeypatch, tf_config):
    monkeypatch.setenv("TF_CONFIG", tf_config)
    with mock.patch.object(tf.distribute, "MultiWorkerMirroredStrategy") as made:
        assert distribute.make_strategy("multi_worker") is made.return_value
    made.assert_called_once_with()


@pytest.mark.parametrize(
    "tpu, model_dir, data_dir, refused",
    [
        ("node-1", "/home/me/run", "gs://b/tfrec", "--model_dir=/home/me/run: --tpu=node-1 is"),
        ("node-1", "gs://b/run", "tfrec", "--data_dir=tfrec: --tpu=node-1 is a TPU node"),
        ("grpc://10.0.0.2:8470", "gs://b/run", "ram://b/tfrec", "--data_dir=ram://b/tfrec"),
        ("node-1", "gs://b/run", "gs://b/tfrec", None),
        (None, "/home/me/run", "tfrec", None),  # a TPU VM: its own disk
        ("local", "/home/me/run", "tfrec", None),
    ],
)
def test_a_tpu_node_is_refused_local_paths_before_it_is_reached(tpu, model_dir, data_dir, refused):
    if refused is None:
        distribute.check_tpu_paths(tpu, model_dir, data_dir)  # raises nothing
        return
    with pytest.raises(EffdrError, match=refused) as error:
        distribute.check_tpu_paths(tpu, model_dir, data_dir)
    assert "\n" not in str(error.value) and "gs://" in str(error.value)
    resolver = mock.Mock(side_effect=AssertionError("the TPU was reached"))
    with (
        mock.patch.object(tf.distribute.cluster_resolver, "TPUClusterResolver", resolver),
        pytest.raises(EffdrError, match=refused),
    ):
        distribute.make_strategy("tpu", tpu, model_dir=model_dir, data_dir=data_dir)
    resolver.assert_not_called()


def test_train_refuses_a_local_model_dir_for_a_tpu_node_before_tensorflow_loads(tmp_path):
    from tests.test_command_lines import one_error_line, run_without_tensorflow

    out = tmp_path / "run"
    result = run_without_tensorflow(
        "train.py", "--config=configs/demo.py", "--data_dir=gs://bucket/tfrec",
        f"--model_dir={out}", "--strategy=tpu", "--tpu=node-1",
    )  # fmt: skip
    one_error_line(result, f"--model_dir={out}: --tpu=node-1 is a TPU node")
    assert not out.exists()


def test_per_device_defaults_cover_every_placement():
    """Every row of the table is reached by one case above, and every case names a row."""
    seen = set()
    for (kind, gpus, replicas, machines), _ in PER_DEVICE.values():
        devices = [mock.Mock()] * gpus
        with mock.patch.object(tf.config, "list_logical_devices", return_value=devices):
            seen.add(distribute.placement(_strategy(kind, replicas, machines)))
    assert seen == set(distribute.PER_DEVICE_DEFAULTS)
