"""Teacher to pseudo-labels: selection by confidence with per-class balancing, and shards that
hold the teacher's probabilities exactly."""

import dataclasses
import json

import numpy as np
import pytest
import tensorflow as tf

from effdr_tf import constants
from effdr_tf.data import builder
from effdr_tf.selftrain import pseudo_labels
from tests import tiny_config
from tests.test_pipeline import TinySource
from tests.tiny_config import train_exported


def test_selection_keeps_the_confident_and_balances_the_grades():
    p = np.array(
        [
            [0.90, 0.05, 0.05],  # 0: grade 0, confident
            [0.60, 0.30, 0.10],  # 1: grade 0, under the threshold
            [0.10, 0.85, 0.05],  # 2: grade 1
            [0.05, 0.95, 0.00],  # 3: grade 1, the most confident
            [0.02, 0.90, 0.08],  # 4: grade 1
            [0.10, 0.10, 0.80],  # 5: grade 2
        ]
    )
    assert sorted(pseudo_labels.select(p).tolist()) == [0, 1, 2, 3, 4, 5]
    assert sorted(pseudo_labels.select(p, threshold=0.7).tolist()) == [0, 2, 3, 4, 5]
    chosen = pseudo_labels.select(p, threshold=0.7, per_class=2, seed=3)
    grades = p[chosen].argmax(1)
    assert np.bincount(grades, minlength=3).tolist() == [2, 2, 2]  # duplicated where short
    assert sorted(chosen[grades == 1].tolist()) == [3, 4]  # the two most confident of grade 1
    assert chosen[grades == 0].tolist() == [0, 0] and chosen[grades == 2].tolist() == [5, 5]
    none = pseudo_labels.select(np.array([[0.5, 0.5, 0.0]]), threshold=0.9, per_class=4)
    assert none.tolist() == []


@dataclasses.dataclass
class WithUnlabelled(TinySource):
    """TinySource whose ``unlabelled`` split carries no grade."""

    def scan(self):
        for record in super().scan():
            if record.split == "unlabelled":
                record = dataclasses.replace(record, label=-1)
            yield record


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("pseudo")
    counts = {
        "train": [20, 14, 14, 12, 12],
        "validation": [4, 3, 3, 3, 3],
        "unlabelled": [6, 5, 5, 4, 4],
    }
    source = WithUnlabelled(counts=counts, textured=True)
    options = builder.BuildOptions(
        image_size=32, preprocess="none", val_fraction=0.0, image_format="png"
    )
    builder.build(source, str(root / "data"), options, progress=False)
    train_exported(root / "data", root / "run")
    return root


def _read(folder):
    from effdr_tf.pipeline import input as pipeline

    features = {
        constants.FEATURE_ID: tf.io.FixedLenFeature([], tf.string),
        constants.FEATURE_LABEL: tf.io.FixedLenFeature([], tf.int64),
        constants.FEATURE_SOFT_LABEL: tf.io.FixedLenFeature([5], tf.float32),
    }
    rows = []
    for shard in pipeline.split_shards(str(folder), "train"):
        for record in tf.data.TFRecordDataset(shard["path"]):
            x = tf.io.parse_single_example(record, features)
            rows.append(
                (x[constants.FEATURE_ID].numpy().decode(), int(x[constants.FEATURE_LABEL]),
                 x[constants.FEATURE_SOFT_LABEL].numpy(), shard["class_counts"])
            )  # fmt: skip
    return rows


def test_pseudo_label_shards_hold_the_teachers_probabilities(teacher, tmp_path):
    from effdr_tf.evaluation import scoring
    from effdr_tf.pipeline import input as pipeline

    run = scoring.load_run(str(teacher / "run"))
    want = scoring.score_split(run, str(teacher / "data"), "unlabelled")
    by_id = dict(zip(want["ids"], want["probabilities"], strict=True))
    manifest = pseudo_labels.write(str(teacher / "run"), str(teacher / "data"), str(tmp_path / "a"))
    rows = _read(tmp_path / "a")
    assert manifest["splits"]["train"]["count"] == len(rows) == 24
    assert sorted(r[0] for r in rows) == sorted(want["ids"])
    for image_id, label, soft, counts in rows:
        np.testing.assert_array_equal(soft, by_id[image_id])  # exactly, as float32
        assert label == int(by_id[image_id].argmax()) and list(counts) == [str(label)]
    # The original encoded bytes are kept.
    originals = pseudo_labels._records_by_id(
        str(teacher / "data"), "unlabelled", pipeline.load_manifest(str(teacher / "data"))
    )
    some = rows[0][0]
    copied = next(
        r for s in pipeline.split_shards(str(tmp_path / "a"), "train")
        for r in tf.data.TFRecordDataset(s["path"])
        if pipeline.parse(r)[constants.FEATURE_ID].numpy().decode() == some
    )  # fmt: skip
    assert (
        pipeline.parse(copied)["image/encoded"].numpy()
        == pipeline.parse(originals[some])["image/encoded"].numpy()
    )
    # The pipeline streams the folder like the builder's.
    config = run.config
    config.data.data_dir = str(tmp_path / "a")
    images, labels = next(iter(pipeline.make_dataset(config, "train")))
    assert images.shape[0] == config.data.batch_size and labels.numpy().min() >= 0
    # A finished folder is returned as it is.
    again = pseudo_labels.write(str(teacher / "run"), str(teacher / "data"), str(tmp_path / "a"))
    assert again == manifest


def test_balanced_hard_pseudo_labels(teacher, tmp_path):
    manifest = pseudo_labels.write(
        str(teacher / "run"), str(teacher / "data"), str(tmp_path / "b"),
        per_class=7, soft=False, threshold=0.0,
    )  # fmt: skip
    counts = manifest["splits"]["train"]["class_counts"]
    assert set(counts.values()) <= {0, 7} and sum(counts.values()) >= 7
    for _, label, soft, _ in _read(tmp_path / "b"):
        np.testing.assert_array_equal(soft, np.eye(5)[label])
    assert manifest["source"]["unique_images"] <= manifest["splits"]["train"]["count"]
    # To a bucket (ram:// stands in for gs://): the same shards, byte for byte.
    bucket = "ram://pseudo_labels_test/b"
    remote = pseudo_labels.write(
        str(teacher / "run"), str(teacher / "data"), bucket, per_class=7, soft=False
    )
    assert remote["splits"] == manifest["splits"]
    for shard in manifest["splits"]["train"]["shards"]:
        with tf.io.gfile.GFile(f"{bucket}/{shard['name']}", "rb") as f:
            assert f.read() == (tmp_path / "b" / shard["name"]).read_bytes()
    assert not [n for n in tf.io.gfile.listdir(bucket) if n.endswith(".tmp")]


def test_a_student_step_on_soft_labels_is_the_cross_entropy_against_them():
    import keras

    from effdr_tf.training import recipes
    from effdr_tf.training import step as step_lib

    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(
        inputs, keras.layers.Dense(5)(keras.layers.GlobalAveragePooling2D()(inputs))
    )
    config = tiny_train_config()
    optimizer = recipes.make_optimizer(config.train, recipes.make_schedule(config.train, 1, 4))
    optimizer.build(model.trainable_variables)
    step = step_lib.ReplicaStep(model, optimizer, num_classes=5, global_batch=4, num_replicas=1)
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(0, 1, (4, 4, 4, 3)).astype(np.float32))
    soft = rng.dirichlet(np.ones(5), 4).astype(np.float32)
    loss, _, logits, _ = step.loss_and_gradients(images, tf.constant(soft))
    log_p = logits.numpy() - np.log(np.exp(logits.numpy()).sum(1, keepdims=True))
    assert float(loss) == pytest.approx(float(np.mean(-(soft * log_p).sum(1))), rel=1e-5)
    hard = tf.constant(soft.argmax(1).astype(np.int32))
    one_hot_loss, *_ = step.loss_and_gradients(images, tf.one_hot(hard, 5))
    int_loss, *_ = step.loss_and_gradients(images, hard)
    assert float(one_hot_loss) == pytest.approx(float(int_loss), rel=1e-6)


def tiny_train_config():
    return tiny_config.get_config()


def test_a_student_trains_on_labelled_and_pseudo_labelled_batches(teacher, tmp_path):
    from effdr_tf.pipeline import input as pipeline
    from effdr_tf.training import loop

    pseudo = tmp_path / "pseudo"
    pseudo_labels.write(str(teacher / "run"), str(teacher / "data"), str(pseudo), per_class=6)
    config = tiny_train_config()
    config.data.data_dir = str(teacher / "data")
    config.selftrain.pseudo_dir = str(pseudo)
    config.selftrain.pseudo_fraction = 0.5
    config.data.deterministic = True
    images, targets = next(iter(pipeline.make_dataset(config, "train", batch_size=64)))
    targets = targets.numpy()
    assert targets.shape == (64, 5)
    np.testing.assert_allclose(targets.sum(1), 1.0, atol=1e-6)
    one_hot = np.isclose(targets.max(1), 1.0)
    assert 10 < (~one_hot).sum() < 54  # soft teacher targets mixed with one-hot grades
    config.train.epochs = 1
    config.train.steps_per_epoch = 0
    summary = loop.train(config, str(tmp_path / "student"), progress=False)
    # An epoch reads the 72 labelled images once: 72 / (1 - 0.5) / 8 = 18 steps.
    assert summary["step"] == 18


def test_rounds_resume_where_they_stopped(teacher, tmp_path, monkeypatch):
    from effdr_tf.selftrain import rounds
    from effdr_tf.training import loop

    config = tiny_train_config()
    config.data.data_dir = str(teacher / "data")
    config.train.epochs = 1
    config.selftrain.noise = "paper"
    config.augment.num_layers = 1
    work = tmp_path / "work"
    table = rounds.self_train(config, str(teacher / "run"), str(work), rounds=1, progress=False)
    assert [row["round"] for row in table] == [0, 1]
    assert table[1]["teacher"] == str(teacher / "run") and table[1]["pseudo_labelled"] == 24
    assert -1 <= table[1]["kappa"] <= 1 and (work / "round1" / "done.json").exists()
    student = json.loads((work / "round1" / "student" / "config.json").read_text())
    assert (student["model"]["dropout_rate"], student["model"]["drop_connect_rate"]) == (0.5, 0.2)
    assert student["augment"]["num_layers"] == 2 and config.augment.num_layers == 1

    trained = []
    real_train = loop.train
    monkeypatch.setattr(
        loop, "train", lambda c, d, **kw: trained.append(d) or real_train(c, d, **kw)
    )
    # Killed after round 2's pseudo-labels, before its student finished: rerun continues
    # there, taught by round 1's student.
    pseudo_labels.write(
        str(work / "round1" / "student"), str(teacher / "data"), str(work / "round2" / "pseudo")
    )
    written = (work / "round2" / "pseudo" / "manifest.json").stat().st_mtime_ns
    table = rounds.self_train(config, str(teacher / "run"), str(work), rounds=2, progress=False)
    assert trained == [str(work / "round2" / "student")]
    assert (work / "round2" / "pseudo" / "manifest.json").stat().st_mtime_ns == written
    assert [row["round"] for row in table] == [0, 1, 2]
    assert table[2]["teacher"] == str(work / "round1" / "student")
    saved = json.loads((work / "rounds.json").read_text())
    assert [row["kappa"] for row in saved] == [row["kappa"] for row in table]
    # TensorBoard: one validation kappa per model, step = round, once each after the resume.
    points = [
        (event.step, tf.make_ndarray(v.tensor).item())
        for path in sorted((work / "summary").glob("events.out.tfevents.*"))
        for event in tf.compat.v1.train.summary_iterator(str(path))
        for v in event.summary.value
        if v.tag == "self_training/validation_kappa"
    ]
    assert [step for step, _ in points] == [row["round"] for row in table]
    assert [k for _, k in points] == pytest.approx([row["kappa"] for row in table], abs=1e-6)


def test_self_train_command_checks_its_flags_before_tensorflow(tmp_path):
    from tests.test_command_lines import one_error_line, run_without_tensorflow

    for flag, message in (
        ("--rounds=0", "--rounds must be at least 1"),
        ("--config.selftrain.pseudo_fraction=1.5", "selftrain.pseudo_fraction=1.5: must be in"),
        ("--config.selftrain.noise=loud", "selftrain.noise='loud': choose recipe or paper"),
    ):
        result = run_without_tensorflow(
            "self_train.py", "--teacher=x", f"--work_dir={tmp_path}", flag
        )
        one_error_line(result, message)
