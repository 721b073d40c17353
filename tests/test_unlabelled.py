"""Ungraded photographs: each source layout writes them as the ``unlabelled`` split (label -1),
the builder counts them, and nothing that needs grades reads them."""

import json

import numpy as np
import pytest
import tensorflow as tf

from effdr_tf.data import builder
from effdr_tf.data.sources import make_source
from effdr_tf.errors import EffdrError
from tests.test_sources import scan, write_fundus


def test_kaggle_test_images_without_a_solution_file_are_unlabelled(tmp_path):
    (tmp_path / "trainLabels.csv").write_text("image,level\n10_left,0\n10_right,2\n")
    for i, name in enumerate(["10_left", "10_right"]):
        write_fundus(tmp_path / "train" / f"{name}.jpeg", i)
    for i, name in enumerate(["1_left", "1_right", "7_left"]):
        write_fundus(tmp_path / "test" / f"{name}.jpeg", 10 + i)
    records, rejects = scan("kaggle_dr", tmp_path)
    assert rejects == []
    ungraded = {k: r for k, r in records.items() if r.split == "unlabelled"}
    assert sorted(ungraded) == ["1_left", "1_right", "7_left"]
    assert all(r.label == -1 for r in ungraded.values())
    assert (ungraded["1_right"].patient_id, ungraded["1_right"].eye) == ("1", "right")
    assert {r.split for k, r in records.items() if k.startswith("10_")} == {"train"}


def test_aptos_test_images_are_unlabelled(tmp_path):
    (tmp_path / "train.csv").write_text("id_code,diagnosis\naaa,2\n")
    write_fundus(tmp_path / "train_images" / "aaa.png", 1)
    (tmp_path / "test.csv").write_text("id_code\nbbb\nccc\nmissing\n")
    for i, name in enumerate(["bbb", "ccc", "stray"]):
        write_fundus(tmp_path / "test_images" / f"{name}.png", 2 + i)
    records, rejects = scan("aptos2019", tmp_path)
    assert records["aaa"].split == "train" and records["aaa"].label == 2
    assert {k: (r.split, r.label) for k, r in records.items() if k != "aaa"} == {
        "bbb": ("unlabelled", -1),
        "ccc": ("unlabelled", -1),
    }
    reasons = {r.path.rsplit("/", 1)[1]: r.reason for r in rejects}
    assert reasons == {"missing.png": "file not found", "stray.png": "not listed in test.csv"}


def test_csv_rows_without_a_label_are_rejected_or_kept_when_asked(tmp_path):
    for name in ("a", "b", "c"):
        write_fundus(tmp_path / f"{name}.jpg", 1)
    (tmp_path / "labels.csv").write_text(
        "path,label,split\na.jpg,1,\nb.jpg,,\nc.jpg,3,unlabelled\n"
    )
    records, rejects = scan("csv", tmp_path)
    assert list(records) == ["a.jpg"]
    assert sorted(r.reason for r in rejects) == [
        "missing label",
        "split 'unlabelled' is for rows without a label",
    ]
    records, rejects = scan("csv", tmp_path, unlabelled="keep")
    assert (records["b.jpg"].split, records["b.jpg"].label) == ("unlabelled", -1)
    assert records["a.jpg"].split == "train" and len(rejects) == 1
    with pytest.raises(EffdrError, match="--unlabelled=maybe"):
        make_source("csv", str(tmp_path), unlabelled="maybe").check()


def test_an_unlabelled_folder_beside_the_grade_folders(tmp_path):
    write_fundus(tmp_path / "2" / "x.jpg", 1)
    write_fundus(tmp_path / "unlabelled" / "day1" / "y.jpg", 2)
    records, rejects = scan("folder", tmp_path)
    assert rejects == []
    assert {k: (r.split, r.label) for k, r in records.items()} == {
        "2/x.jpg": ("train", 2),
        "unlabelled/day1/y.jpg": ("unlabelled", -1),
    }


def test_builder_writes_and_counts_the_unlabelled_split(tmp_path):
    data = tmp_path / "aptos"
    data.mkdir()
    (data / "train.csv").write_text(
        "id_code,diagnosis\n" + "".join(f"t{i},{i % 5}\n" for i in range(10))
    )
    for i in range(10):
        write_fundus(data / "train_images" / f"t{i}.png", i, grade=i % 5)
    (data / "test.csv").write_text("id_code\n" + "".join(f"u{i}\n" for i in range(4)))
    for i in range(4):
        write_fundus(data / "test_images" / f"u{i}.png", 20 + i)
    source = make_source("aptos2019", str(data))
    options = builder.BuildOptions(image_size=64, val_fraction=0.2)
    out = tmp_path / "shards"
    manifest = builder.build(source, str(out), options, progress=False)
    splits = manifest["splits"]
    assert splits["unlabelled"]["count"] == 4
    assert sum(v["count"] for k, v in splits.items() if k != "unlabelled") == 10
    assert sum(splits["unlabelled"]["class_counts"].values()) == 0
    assert json.loads((out / "manifest.json").read_text())["splits"]["unlabelled"]["count"] == 4
    from effdr_tf.pipeline import input as pipeline

    paths = [s["path"] for s in pipeline.split_shards(str(out), "unlabelled", "none", manifest)]
    labels = [
        int(pipeline.parse(r)["image/class/label"].numpy()) for r in tf.data.TFRecordDataset(paths)
    ]
    assert labels == [-1] * 4
    ids = {pipeline.parse(r)["image/id"].numpy().decode() for r in tf.data.TFRecordDataset(paths)}
    assert ids == {"u0", "u1", "u2", "u3"}
    assert np.all(np.array(labels) == -1)


def test_eval_refuses_the_unlabelled_split(tmp_path):
    from effdr_tf.evaluation import evaluate

    with pytest.raises(EffdrError, match="no grades to measure against"):
        evaluate.evaluate(str(tmp_path), data_dir=str(tmp_path), splits=["unlabelled"])


def test_builder_command_keeps_unlabelled_csv_rows_when_asked(tmp_path):
    from tests.conftest import run_command

    for name in ("a", "b", "c"):
        write_fundus(tmp_path / "raw" / f"{name}.jpg", 1)
    (tmp_path / "raw" / "labels.csv").write_text("path,label\na.jpg,1\nb.jpg,0\nc.jpg,\n")
    result = run_command(
        "tfrecord_builder.py", "--data=csv", f"--data_dir={tmp_path / 'raw'}",
        f"--output_dir={tmp_path / 'out'}", "--image_size=64", "--unlabelled=keep",
        "--val_fraction=0", "--workers=1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert {k: v["count"] for k, v in manifest["splits"].items()} == {"train": 2, "unlabelled": 1}


def test_withheld_grades_become_the_unlabelled_split(tmp_path):
    from effdr_tf.data import splits as carving

    records = carving.carve_validation(
        list(make_source("synthetic_dr", num_images=800, seed=3, image_size=32).scan()), 0.2, 3
    )
    withheld = carving.withhold_labels(records, 0.9, seed=3)
    before = {r.id: r for r in records}
    by_patient = {}
    for r in withheld:
        by_patient.setdefault(r.patient_id, set()).add((r.split, r.label == -1))
        if before[r.id].split != "train":  # validation and test keep their grades
            assert (r.split, r.label) == (before[r.id].split, before[r.id].label)
        elif r.split == "unlabelled":
            assert r.label == -1
        else:
            assert (r.split, r.label) == ("train", before[r.id].label)
    assert all(len(s) == 1 for s in by_patient.values())  # both eyes go together

    def worst_eye_shares(recs):
        worst = {}
        for r in recs:
            worst[r.patient_id] = max(worst.get(r.patient_id, 0), r.label)
        return np.bincount(list(worst.values()), minlength=5) / len(worst)

    kept = [r for r in withheld if r.split == "train"]
    was_train = [r for r in records if r.split == "train"]
    assert abs(len(kept) / len(was_train) - 0.1) < 0.03
    # Every grade keeps its share among the patients left with grades (to rounding).
    assert np.abs(worst_eye_shares(kept) - worst_eye_shares(was_train)).max() < 0.04
    assert min(np.bincount([r.label for r in kept], minlength=5)) > 0

    # The builder applies it after carving validation, and records it.
    source = make_source("synthetic_dr", num_images=40, seed=3, image_size=32)
    options = builder.BuildOptions(image_size=32, val_fraction=0.2, withhold_labels=0.5, seed=3)
    manifest = builder.build(source, str(tmp_path), options, progress=False)
    expected = carving.withhold_labels(
        carving.carve_validation(list(source.scan()), 0.2, 3), 0.5, 3
    )
    counts = {k: v["count"] for k, v in manifest["splits"].items()}
    assert counts == {s: sum(r.split == s for r in expected) for s in counts}
    assert counts["unlabelled"] > 0 and counts["train"] > 0
    assert manifest["withhold_labels"] == 0.5
