"""What only several replicas can show: each replica its own random masks, one set of
decisions, batch-norm statistics averaged before validation and export; and gradient
accumulation, the loss-scale floor, the sampler's schedule on resume and the step's figures."""

import glob

import numpy as np
import pytest
import tensorflow as tf

from effdr_tf.errors import EffdrError
from effdr_tf.pipeline import balance
from effdr_tf.training import loop
from tests.conftest import run_command
from tests.test_distributed import _result, _workers
from tests.test_pipeline import build_tiny
from tests.test_training import tiny_config


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    build_tiny(out, {"train": [24, 16, 16, 12, 12], "validation": [4, 4, 4, 4, 4]}, textured=True)
    return out


def _check_masks(found):
    assert all(found["replicas_differ"]), found  # not the same dropout on every replica
    assert found["steps_differ"]
    assert found["same_seed_same_masks"]  # a seed still fixes every stream
    assert found["resume_continues"]  # a restored run draws what it would have drawn


def _check_decisions(found, replicas_before):
    # The chief's scores fell twice after the first: its rate was halved twice, and the best
    # value stayed its first score; the other worker's rising scores changed nothing.
    assert found["lr_scales"] == [1.0, 0.5, 0.25], found
    assert found["best"] == [0.5, 0.5, 0.5], found
    mean = float(np.mean(replicas_before))
    assert found["moving_mean"] == pytest.approx([mean] * len(found["moving_mean"])), found


def test_two_replicas_draw_their_own_masks_and_agree(tiny_data, tmp_path):
    result = run_command(
        "tests/two_replicas.py", str(tiny_data), str(tmp_path), "masks", "decisions",
        "accumulation", timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    found = _result(result.stdout)
    assert found["masks"]["local_replicas"] == 2
    _check_masks(found["masks"])
    decisions = found["decisions"]
    _check_decisions(decisions, [1.0, 2.0])  # each replica's copy set to its own value
    assert decisions["exported_moving_mean"] == pytest.approx(1.5)
    # 2 replicas x 4 accumulated parts of 2 images in float16 against one device's batch of
    # 16 at once: measured 1.7e-5 of the update.
    same = found["accumulation"]
    assert same["policy"] == "float16" and same["skipped"] == [0, 0]
    np.testing.assert_allclose(same["losses_one"], same["losses_two"], rtol=1e-3)
    assert same["update_relative"] < 1e-3 and same["ema_update_relative"] < 1e-3, same


def test_two_workers_draw_their_own_masks_and_take_the_chiefs_decisions(tiny_data, tmp_path):
    results = _workers(
        tmp_path,
        # One OUT_DIR: the workers share model_dir, as they must.
        lambda i: ["tests/two_replicas.py", str(tiny_data), str(tmp_path), "masks", "decisions"],
        timeout=600,
    )
    found = []
    for code, out, err in results:
        assert code == 0, err[-3000:]
        found.append(_result(out))
    for worker in found:
        _check_masks(worker["masks"])
        _check_decisions(worker["decisions"], [1.0, 2.0])  # worker w's copy holds w + 1
    assert found[0]["masks"]["digest"] != found[1]["masks"]["digest"]
    assert found[0]["decisions"]["exported_moving_mean"] == pytest.approx(1.5)


def _trained_weights(tiny_data, tmp_path, name, batch, parts, steps=2):
    config = tiny_config(
        tiny_data, data__batch_size=batch, train__accumulation_steps=parts,
        train__optimizer="sgd", train__learning_rate=0.05, train__freeze_bn=True,
        train__weight_decay=1e-3, train__ema_decay=0.0, model__dropout_rate=0.0,
        model__drop_connect_rate=0.0, train__deterministic=True,
    )  # fmt: skip
    trainer = loop.Trainer(config, str(tmp_path / name), tf.distribute.get_strategy(), False)
    trainer._refresh_trainability(0)
    start = [w.numpy().copy() for w in trainer.model.trainable_variables]
    figures = [trainer._train_fn(trainer.iterator, tf.constant(1)) for _ in range(steps)]
    after = [w.numpy() for w in trainer.model.trainable_variables]
    return start, after, [float(f["loss"]) for f in figures], int(trainer.optimizer.iterations)


def test_four_accumulated_parts_of_8_equal_one_step_of_32(tiny_data, tmp_path):
    start, whole, whole_losses, updates = _trained_weights(tiny_data, tmp_path, "a", 32, 1)
    start_parts, parts, part_losses, part_updates = _trained_weights(
        tiny_data, tmp_path, "b", 32, 4
    )
    for a, b in zip(start, start_parts, strict=True):
        np.testing.assert_array_equal(a, b)
    assert updates == part_updates == 2  # the optimizer advanced once per update

    def flat(arrays):
        return np.concatenate([a.ravel() for a in arrays]).astype(np.float64)

    moved = flat(whole) - flat(start)
    difference = flat(parts) - flat(whole)
    assert np.linalg.norm(moved) > 0
    assert np.linalg.norm(difference) < 1e-5 * np.linalg.norm(moved)
    np.testing.assert_allclose(part_losses, whole_losses, rtol=1e-5)


def test_accumulation_must_divide_the_batch(tiny_data, tmp_path):
    config = tiny_config(tiny_data, data__batch_size=8, train__accumulation_steps=3)
    with pytest.raises(EffdrError, match="does not divide into train.accumulation_steps=3"):
        loop.check_config(config, tf.distribute.get_strategy())


def test_a_collapsed_loss_scale_stops_the_run_naming_the_layer(tiny_data, tmp_path):
    config = tiny_config(
        tiny_data, train__mixed_precision="mixed_float16", train__max_skipped_steps=3,
        train__epochs=10, train__checkpoint_every_steps=1000,
    )  # fmt: skip
    import keras

    try:
        trainer = loop.Trainer(config, str(tmp_path), tf.distribute.get_strategy(), False)
        original = trainer.replica_step.loss_and_gradients
        poisoned_index = len(trainer.model.trainable_variables) - 1

        def poisoned(images, labels):
            loss, reg, logits, grads = original(images, labels)
            grads = [g * np.inf if i == poisoned_index else g for i, g in enumerate(grads)]
            return loss, reg, logits, grads

        trainer.replica_step.loss_and_gradients = poisoned
        # A scale these batches do not overflow at by themselves, far from the floor.
        trainer.loss_scale.scale.assign(256.0)
        with pytest.raises(loop.LossScaleCollapsedError) as raised:
            trainer.run()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("float16: 3 updates in a row skipped"), message
    assert trainer.model.trainable_variables[poisoned_index].path in message
    assert not glob.glob(str(tmp_path / "checkpoints" / "ckpt-*"))  # nothing saved
    assert isinstance(raised.value, EffdrError)  # train.py: `error: ...`, exit 2


def test_the_sampler_schedule_continues_from_the_examples_drawn():
    start, end = np.array([0.8, 0.2]), np.array([0.5, 0.5])
    fresh = list(balance.schedule(start, end, 100).take(60).as_numpy_iterator())
    resumed = list(balance.schedule(start, end, 100, offset=40).take(20).as_numpy_iterator())
    np.testing.assert_allclose(resumed, fresh[40:60])
    assert balance.schedule(start, end, 100, offset=150) == pytest.approx([0.5, 0.5])


def test_training_images_travel_as_uint8_and_train_the_same(tiny_data):
    from effdr_tf.pipeline import input as pipeline

    config = tiny_config(tiny_data, data__deterministic=True)
    floats, _ = next(iter(pipeline.make_dataset(config, "train")))
    small, _ = next(iter(pipeline.make_dataset(config, "train", transfer=True)))
    assert small.dtype == tf.uint8 and floats.dtype == tf.float32
    np.testing.assert_array_equal(tf.cast(small, tf.float32).numpy(), floats.numpy())


def test_one_loss_value_per_step_in_tensorboard(tiny_data, tmp_path):
    config = tiny_config(tiny_data, train__epochs=1, train__log_every_steps=1)
    loop.train(config, str(tmp_path), progress=False)
    steps = {}
    for path in glob.glob(str(tmp_path / "train" / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                steps.setdefault(value.tag, []).append(event.step)
    assert sorted(steps["loss"]) == [1, 2, 3, 4]
    assert steps["epoch_loss"] == [4]
