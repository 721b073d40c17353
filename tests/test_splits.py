"""Validation splits that keep every grade, say when they come out empty, and never separate
copies of one photograph or the two eyes of one examination."""

import json

import cv2
import numpy as np
import pytest

from effdr_tf.data import builder, near_duplicates, splits, synthetic
from effdr_tf.data.schema import Record
from effdr_tf.data.sources import make_source
from effdr_tf.errors import EffdrError
from tests.test_builder import _clinic, read_split
from tests.test_sources import write_fundus


def _patients(grades, eyes=2):
    """Records of one patient per entry of ``grades``, each with ``eyes`` eyes of that grade."""
    return [
        Record(path=f"p{i}_{e}.jpg", label=g, id=f"p{i}_{e}", patient_id=f"p{i}")
        for i, g in enumerate(grades)
        for e in range(eyes)
    ]


@pytest.mark.parametrize("seed", range(5))
def test_every_grade_with_two_patients_gives_one_to_validation(seed):
    # 15 patients over 5 grades: at 0.1, rounding gives no grade a validation patient.
    grades = [0] * 5 + [1] * 4 + [2] * 3 + [3] * 2 + [4] * 1
    records = _patients(grades)
    carved = splits.carve_validation(records, 0.1, seed)
    split_of = {}
    for r in carved:
        split_of.setdefault(r.patient_id, set()).add(r.split)
    assert all(len(s) == 1 for s in split_of.values())  # both eyes together
    per_grade = {}
    for i, g in enumerate(grades):
        per_grade.setdefault(g, []).append(split_of[f"p{i}"].pop())
    for g, placed in per_grade.items():
        if len(placed) >= 2:
            assert placed.count("validation") == 1 and "train" in placed, (g, placed)
        else:
            assert placed == ["train"]
    assert splits.carving_warnings(records, 0.1) == [
        "grade 4: only 1 training patient, kept for training, so validation has no patient of "
        "grade 4"
    ]
    # Large grades keep their share: the minimum only lifts rounding to zero.
    many = _patients([0] * 200 + [1] * 30, eyes=1)
    val = [r.label for r in splits.carve_validation(many, 0.1, seed) if r.split == "validation"]
    assert np.bincount(val).tolist() == [20, 3]


def test_an_empty_validation_split_is_a_warning_at_build_and_at_train_time(tmp_path, caplog):
    # One patient per grade: nothing can be carved without emptying a grade from training.
    source = _clinic(tmp_path / "clinic", n=3)
    options = builder.BuildOptions(image_size=32, image_format="png", val_fraction=0.1)
    out = tmp_path / "out"
    manifest = builder.build(source, str(out), options, progress=False)
    assert "validation" not in manifest["splits"]
    empty = [w for w in manifest["warnings"] if w.startswith("no validation split")]
    assert len(empty) == 1 and "best.weights.h5 will be the last epoch" in empty[0]
    assert "grade 2: only 1 training patient" in " ".join(manifest["warnings"])
    assert json.loads((out / "manifest.json").read_text())["warnings"] == manifest["warnings"]
    printed = builder.summary(manifest, str(out))
    assert f"warning: {empty[0]}" in printed
    assert empty[0] in caplog.text  # on stderr while building
    # Training repeats it when the run starts.
    line = splits.validation_warning(manifest, str(out))
    assert line == f"{out}: {empty[0]}"
    # A build that has validation warns of nothing.
    fine = _clinic(tmp_path / "bigger", n=3)
    (tmp_path / "bigger" / "labels.csv").write_text(
        "path,label\n" + "".join(f"img {i}.jpg,{i % 2}\n" for i in range(3))
    )
    manifest = builder.build(fine, str(tmp_path / "out2"), options, progress=False)
    assert manifest["splits"]["validation"]["count"] == 1
    assert splits.validation_warning(manifest, str(tmp_path / "out2")) is None
    assert not any(w.startswith("no validation split") for w in manifest["warnings"])


def test_val_fraction_zero_says_why_there_is_no_validation(tmp_path):
    source = _clinic(tmp_path / "clinic", n=4)
    options = builder.BuildOptions(image_size=32, image_format="png", val_fraction=0)
    manifest = builder.build(source, str(tmp_path / "out"), options, progress=False)
    assert manifest["warnings"] == [
        splits.empty_validation_warning("--val_fraction=0 and the source has none")
    ]


def _photographs():
    """Distinct synthetic photographs (both eyes, several indices), RGB uint8."""
    return [
        synthetic.generate(grade, index, seed=9, size=192, eye=eye)[0]
        for grade, index, eye in [(0, 1, "right"), (2, 2, "left"), (1, 7, "right"), (4, 3, "left")]
    ]


def _variants(image):
    """The same photograph as a second export would give it."""
    h, w = image.shape[:2]
    ok, jpeg = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 60])
    assert ok
    return {
        "smaller": cv2.resize(image, (w * 2 // 3, h * 2 // 3), interpolation=cv2.INTER_AREA),
        "brighter": np.clip(image * 1.1, 0, 255).astype(np.uint8),
        "darker": (image * 0.85).astype(np.uint8),
        "jpeg q60": cv2.imdecode(jpeg, cv2.IMREAD_COLOR)[..., ::-1],
        "wider border": cv2.copyMakeBorder(image, 10, 10, 50, 50, cv2.BORDER_CONSTANT, value=0),
    }


def test_copies_of_a_photograph_hash_within_the_distance_and_others_outside():
    photographs = _photographs()
    hashes = [near_duplicates.image_hash(p) for p in photographs]
    apart = near_duplicates.distances(hashes)[np.triu_indices(len(hashes), 1)]
    assert apart.min() > near_duplicates.DEFAULT_DISTANCE, apart
    for photograph, value in zip(photographs, hashes, strict=True):
        for name, copy in _variants(photograph).items():
            moved = int(near_duplicates.distances([value, near_duplicates.image_hash(copy)])[0, 1])
            assert moved <= near_duplicates.DEFAULT_DISTANCE, (name, moved)
    # Clusters join through chains and leave single images out.
    size = near_duplicates.HASH_BITS // 8
    chain = {k: bytes([v]) + bytes(size - 1) for k, v in {"a": 0, "b": 7, "c": 63}.items()}
    chain["d"] = bytes([255]) * size
    assert near_duplicates.clusters(chain, 3) == [["a", "b", "c"]]


def _aptos(folder, duplicate_grade=3):
    """An APTOS-layout folder: four distinct photographs, and a second export of the first
    (smaller, brighter, re-encoded) graded ``duplicate_grade``."""
    photographs = _photographs()
    ids = ["a0", "b1", "c2", "d3"]
    (folder / "train_images").mkdir(parents=True)
    for name, image in zip(ids, photographs, strict=True):
        assert cv2.imwrite(str(folder / "train_images" / f"{name}.png"), image[..., ::-1])
    copy = _variants(photographs[0])["smaller"]
    copy = np.clip(copy * 1.1, 0, 255).astype(np.uint8)
    assert cv2.imwrite(str(folder / "train_images" / "e4.png"), copy[..., ::-1])
    rows = zip([*ids, "e4"], [1, 2, 1, 2, duplicate_grade], strict=True)
    text = "".join(f"{k},{g}\n" for k, g in rows)
    (folder / "train.csv").write_text("id_code,diagnosis\n" + text)
    return make_source("aptos2019", str(folder))


def test_aptos_near_duplicates_share_a_patient_and_a_split(tmp_path):
    source = _aptos(tmp_path / "aptos")
    records = [r for r in source.scan() if isinstance(r, Record)]
    options = builder.BuildOptions(image_size=32, image_format="png", val_fraction=0.5)
    grouped, found = builder.group_near_duplicates(
        records, source, options, workers=1, progress=False
    )
    patient = {r.id: r.group for r in grouped}
    assert patient["a0"] == patient["e4"] == "a0"
    assert len({patient[k] for k in ("a0", "b1", "c2", "d3")}) == 4
    assert (found["clusters"], found["images"], found["hashed"]) == (1, 2, 5)
    assert found["grade_conflicts"] == 1  # graded 1 and 3: reported, not changed
    assert found["groups"] == [{"ids": ["a0", "e4"], "grades": [1, 3]}]
    assert {r.id: r.label for r in grouped} == {r.id: r.label for r in records}
    # Whatever the seed, the copies are carved together.
    for seed in range(20):
        split = {r.id: r.split for r in splits.carve_validation(grouped, 0.5, seed)}
        assert split["a0"] == split["e4"]
    # The build writes that patient id, and says what it merged.
    manifest = builder.build(source, str(tmp_path / "out"), options, progress=False)
    assert manifest["near_duplicates"]["clusters"] == 1
    written = {
        e["image/id"].decode(): (e["image/patient_id"].decode(), split)
        for split in manifest["splits"]
        for e in read_split(tmp_path / "out", split)
    }
    assert written["a0"] == written["e4"] and written["a0"][0] == "a0"
    printed = builder.summary(manifest, str(tmp_path / "out"))
    assert "near-duplicates: 2 of 5 training images in 1 cluster(s)" in printed
    assert "1 with different grades" in printed
    assert any("near-duplicate cluster(s) hold different grades" in w for w in manifest["warnings"])
    # The grouping can be turned off, and a bad distance is one line.
    off = builder.BuildOptions(near_duplicate_distance=None)
    assert builder.group_near_duplicates(records, source, off, workers=1, progress=False) == (
        records,
        None,
    )
    with pytest.raises(EffdrError, match="--near_duplicate_distance=200: choose 0..128"):
        builder.BuildOptions(near_duplicate_distance=200).check()


def _messidor(folder, pairs=True):
    names = [f"IM{i:06d}.JPG" for i in range(6)]
    for i, name in enumerate(names):
        write_fundus(folder / "IMAGES" / name, i)
    (folder / "messidor_data.csv").write_text(
        "image_id,adjudicated_dr_grade,adjudicated_dme,adjudicated_gradable\n"
        + "".join(f"{n},{g},0,1\n" for n, g in zip(names, [0, 2, 0, 0, 1, 1], strict=True))
    )
    if pairs:
        # ADCIS's file: semicolons, a header, sometimes other case or extension than the grades.
        (folder / "messidor-2.csv").write_text(
            "left ; right\nIM000000.JPG;IM000001.JPG\nim000002.jpg;IM000003.JPG\n"
        )
    return make_source("messidor2", str(folder))


def test_messidor2_examinations_pair_the_two_eyes_in_one_split(tmp_path):
    source = _messidor(tmp_path / "m2")
    records = {r.id: r for r in source.scan() if isinstance(r, Record)}
    assert (records["IM000000.JPG"].group, records["IM000000.JPG"].eye) == ("IM000000", "left")
    assert (records["IM000001.JPG"].group, records["IM000001.JPG"].eye) == ("IM000000", "right")
    assert records["IM000002.JPG"].group == records["IM000003.JPG"].group == "im000002"
    assert records["IM000004.JPG"].group == "IM000004.JPG"  # in no examination: alone
    assert source.warnings() == [
        f"{tmp_path / 'm2' / 'messidor-2.csv'}: 2 graded image(s) in no examination, each its "
        "own patient"
    ]
    for seed in range(20):
        split = {r.id: r.split for r in splits.carve_validation(list(records.values()), 0.5, seed)}
        assert split["IM000000.JPG"] == split["IM000001.JPG"]
        assert split["IM000002.JPG"] == split["IM000003.JPG"]

    unpaired = _messidor(tmp_path / "bare", pairs=False)
    assert all(r.patient_id == "" for r in unpaired.scan() if isinstance(r, Record))
    assert (
        "messidor-2.csv not found: the two eyes of an examination cannot be paired"
        in (unpaired.warnings()[0])
    )
    (tmp_path / "bare" / "messidor-2.csv").write_text("image,grade\nIM000000.JPG,0\n")
    with pytest.raises(EffdrError, match=r"messidor-2.csv: no left and right columns"):
        list(unpaired.scan())
