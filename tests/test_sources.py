"""Every dataset adapter on a small tree in its real layout."""

import collections
import io
import os
import pickle
import tarfile

import cv2
import numpy as np
import pytest

from effdr_tf.data import synthetic
from effdr_tf.data.schema import Record, Reject
from effdr_tf.data.sources import make_source
from effdr_tf.errors import EffdrError


def write_fundus(path, seed=0, grade=0):
    """A small fundus photograph (JPEG or PNG by extension)."""
    image, _ = synthetic.generate(grade, seed, seed=9, size=160)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), image[..., ::-1])
    return str(path)


def scan(name, data_dir="", **options):
    items = list(make_source(name, str(data_dir), **options).scan())
    records = {r.id: r for r in items if isinstance(r, Record)}
    rejects = [r for r in items if isinstance(r, Reject)]
    return records, rejects


def test_kaggle_dr(tmp_path):
    (tmp_path / "trainLabels.csv").write_text(
        "image,level\n10_left,0\n10_right,2\n13_left,4\n13_right,4\n15_left,1\n"
    )
    for i, name in enumerate(["10_left", "10_right", "13_left", "13_right", "99_left"]):
        write_fundus(tmp_path / "train" / f"{name}.jpeg", i)
    (tmp_path / "retinopathy_solution.csv").write_text(
        "image,level,Usage\n1_left,0,Public\n1_right,3,Public\n2_left,1,Private\n2_right,0,Other\n"
    )
    for i, name in enumerate(["1_left", "1_right", "2_left", "2_right"]):
        write_fundus(tmp_path / "test" / f"{name}.jpeg", 10 + i)
    records, rejects = scan("kaggle_dr", tmp_path)
    assert sorted(records) == [
        "10_left",
        "10_right",
        "13_left",
        "13_right",
        "1_left",
        "1_right",
        "2_left",
    ]
    assert records["13_right"].label == 4 and records["10_right"].label == 2
    assert records["13_left"].patient_id == "13" and records["13_left"].eye == "left"
    splits = collections.Counter(r.split for r in records.values())
    assert splits == {"train": 4, "public_test": 2, "private_test": 1}
    reasons = {os.path.basename(r.path): r.reason for r in rejects}
    assert reasons["15_left.jpeg"] == "file not found"
    assert reasons["99_left.jpeg"].startswith("no label")
    assert "unknown Usage 'Other'" in reasons["2_right.jpeg"]
    assert len(records) + len(rejects) == 10  # 5 + 4 label rows, plus one unlabelled file
    assert len({r.path for r in rejects}) == len(rejects)


def test_aptos2019(tmp_path):
    (tmp_path / "train.csv").write_text("id_code,diagnosis\n000c1434d8d7,2\n001639a390f0,x\n")
    write_fundus(tmp_path / "train_images" / "000c1434d8d7.png", 1)
    write_fundus(tmp_path / "train_images" / "001639a390f0.png", 2)
    records, rejects = scan("aptos2019", tmp_path)
    assert list(records) == ["000c1434d8d7"] and records["000c1434d8d7"].label == 2
    assert records["000c1434d8d7"].group == "000c1434d8d7"
    assert [r.reason for r in rejects] == ["label 'x' is not an integer"]


def test_messidor2(tmp_path):
    (tmp_path / "messidor_data.csv").write_text(
        "image_id,adjudicated_dr_grade,adjudicated_dme,adjudicated_gradable\n"
        "20051020_43808_0100_PP.png,0,0,1\nIM002385.JPG,3,1,1\nIM004176.JPG,,,0\n"
    )
    for i, name in enumerate(["20051020_43808_0100_PP.png", "IM002385.JPG", "IM004176.JPG"]):
        write_fundus(tmp_path / "IMAGES" / name, i)
    records, rejects = scan("messidor2", tmp_path)
    assert {k: r.label for k, r in records.items()} == {
        "20051020_43808_0100_PP.png": 0,
        "IM002385.JPG": 3,
    }
    assert [r.reason for r in rejects] == ["ungradable (adjudicated_gradable=0), excluded"]


def test_idrid(tmp_path):
    images = tmp_path / "1. Original Images"
    truth = tmp_path / "2. Groundtruths"
    truth.mkdir()
    header = "Image name,Retinopathy grade,Risk of macular edema ,,\n"
    (truth / "a. IDRiD_Disease Grading_Training Labels.csv").write_text(
        header + "IDRiD_001,3,2,,\nIDRiD_002,4,1,,\n"
    )
    (truth / "b. IDRiD_Disease Grading_Testing Labels.csv").write_text(header + "IDRiD_001,0,0,,\n")
    write_fundus(images / "a. Training Set" / "IDRiD_001.jpg", 1)
    write_fundus(images / "a. Training Set" / "IDRiD_002.jpg", 2)
    write_fundus(images / "b. Testing Set" / "IDRiD_001.jpg", 3)
    records, rejects = scan("idrid", tmp_path)
    assert {k: (r.label, r.split) for k, r in records.items()} == {
        "train/IDRiD_001": (3, "train"),
        "train/IDRiD_002": (4, "train"),
        "test/IDRiD_001": (0, "test"),
    }
    assert rejects == []


def test_ddr(tmp_path):
    root = tmp_path / "DR_grading"
    root.mkdir()
    (root / "train.txt").write_text("007-0004-000.jpg 0\n007-0007-000.jpg 5\n")
    (root / "valid.txt").write_text("007-0004-000.jpg 2\n")
    (root / "test.txt").write_text("20170413102628830.jpg 4\n")
    write_fundus(root / "train" / "007-0004-000.jpg", 1)
    write_fundus(root / "train" / "007-0007-000.jpg", 2)
    write_fundus(root / "valid" / "007-0004-000.jpg", 3)
    write_fundus(root / "test" / "20170413102628830.jpg", 4)
    records, rejects = scan("ddr", tmp_path)
    assert {k: (r.label, r.split) for k, r in records.items()} == {
        "train/007-0004-000.jpg": (0, "train"),
        "valid/007-0004-000.jpg": (2, "validation"),
        "test/20170413102628830.jpg": (4, "test"),
    }
    assert [r.reason for r in rejects] == ["ungradable (DDR grade 5), excluded"]


def test_csv_and_folder(tmp_path):
    write_fundus(tmp_path / "clinic" / "a.jpg", 1)
    write_fundus(tmp_path / "clinic" / "b.jpg", 2)
    (tmp_path / "labels.csv").write_text(
        "path,label,patient_id,eye,split\nclinic/a.jpg,1,p1,LEFT,test\nclinic/b.jpg,0,p1,right,\n"
    )
    records, rejects = scan("csv", tmp_path)
    assert records["clinic/a.jpg"].split == "test" and records["clinic/a.jpg"].eye == "left"
    assert records["clinic/b.jpg"].split == "train" and records["clinic/b.jpg"].group == "p1"
    assert rejects == []

    folders = tmp_path / "graded"
    write_fundus(folders / "0" / "x.jpg", 1)
    write_fundus(folders / "4" / "deep" / "y.png", 2)
    write_fundus(folders / "notes" / "z.jpg", 3)
    (folders / "README.txt").write_text("hello")
    records, rejects = scan("folder", folders)
    assert {k: r.label for k, r in records.items()} == {"0/x.jpg": 0, "4/deep/y.png": 4}
    reasons = sorted(r.reason for r in rejects)
    assert reasons[0].startswith("folder 'notes' is not a grade") and reasons[1] == (
        "not inside a grade folder"
    )


def _cifar_batch(n, offset, key=b"labels"):
    rng = np.random.default_rng(offset)
    return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), key: list(range(n))}


def test_cifar10_tarball_and_cifar100_folder(tmp_path):
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        for name, n in [*[(f"data_batch_{i}", 2) for i in range(1, 6)], ("test_batch", 3)]:
            raw = pickle.dumps(_cifar_batch(n, len(name)))
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    records, rejects = scan("cifar10", tmp_path)
    assert len(records) == 13 and not rejects
    assert collections.Counter(r.split for r in records.values()) == {"train": 10, "test": 3}
    first = records["train/00000"]
    decoded = cv2.imdecode(np.frombuffer(first.data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    expected = _cifar_batch(2, len("data_batch_1"))[b"data"][0].reshape(3, 32, 32)
    np.testing.assert_array_equal(decoded, expected.transpose(1, 2, 0))

    folder = tmp_path / "c100" / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n in [("train", 4), ("test", 2)]:
        (folder / name).write_bytes(pickle.dumps(_cifar_batch(n, n, key=b"fine_labels")))
    records, _ = scan("cifar100", tmp_path / "c100")
    assert len(records) == 6 and records["train/00003"].label == 3


def test_cifar_pickles_cannot_run_code(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "train").write_bytes(pickle.dumps({b"data": os.getcwd}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        scan("cifar100", tmp_path)


def test_cifar10_from_tfds_data_dir(tmp_path):
    import tensorflow as tf

    folder = tmp_path / "cifar10" / "3.0.2"
    folder.mkdir(parents=True)
    for split, n in [("train", 3), ("test", 2)]:
        with tf.io.TFRecordWriter(str(folder / f"cifar10-{split}.tfrecord-00000-of-00001")) as w:
            for i in range(n):
                png = cv2.imencode(".png", np.full((32, 32, 3), i * 40, np.uint8))[1].tobytes()
                feature = {
                    "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png])),
                    "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[i + 1])),
                }
                example = tf.train.Example(features=tf.train.Features(feature=feature))
                w.write(example.SerializeToString())
    records, _ = scan("cifar10", tmp_path)
    assert {k: r.label for k, r in records.items()} == {
        "train/00000": 1,
        "train/00001": 2,
        "train/00002": 3,
        "test/00000": 1,
        "test/00001": 2,
    }


def test_synthetic_dr_patients_and_splits():
    records, rejects = scan("synthetic_dr", num_images=200, seed=4)
    assert len(records) == 200 and not rejects
    by_patient = collections.defaultdict(set)
    for r in records.values():
        by_patient[r.patient_id].add(r.split)
    assert all(len(s) == 1 for s in by_patient.values())  # both eyes in one split
    tests = sum(1 for s in by_patient.values() if s == {"test"})
    assert tests == 20  # a fifth of 100 patients


@pytest.mark.parametrize(
    "name, files, match",
    [
        ("kaggle_dr", {}, "trainLabels.csv: label file not found"),
        ("aptos2019", {}, "train.csv: label file not found"),
        ("csv", {"labels.csv": "file,grade\n"}, "missing column"),
        ("ddr", {}, "label file not found"),
        ("idrid", {}, "Training"),
        ("cifar10", {}, "cifar-10-python.tar.gz"),
    ],
)
def test_missing_label_files_are_clear_errors(tmp_path, name, files, match):
    for file, text in files.items():
        (tmp_path / file).write_text(text)
    source = make_source(name, str(tmp_path))
    with pytest.raises(EffdrError, match=match):
        source.check()
        list(source.scan())
    with pytest.raises(EffdrError, match="data_dir not found"):
        make_source(name, str(tmp_path / "absent")).check()


@pytest.mark.parametrize(
    "text, match",
    [
        ("path,label,label,path\na.jpg,1,2,b.jpg\n", "duplicate column name.s. label, path"),
        ("path,label\na.jpg,1\n" + "b" * 200_000 + ".jpg,2\n", "line 3: field larger than"),
        ('path,label\na.jpg,1\n"b.jpg,2\nc.jpg,3\n' + "x" * 200_000, "line 3: field larger"),
        ("path,label\na.jpg,1\nb\0.jpg,2\n", "line 3: NUL byte"),
        ("\ufeffpath,label\n".encode("utf-16"), "not UTF-8 text"),
    ],
    ids=["duplicate-columns", "long-field", "unclosed-quote", "nul-byte", "utf-16"],
)
def test_label_file_mistakes_are_one_line_errors(tmp_path, text, match):
    labels = tmp_path / "labels.csv"
    if isinstance(text, bytes):
        labels.write_bytes(text)
    else:
        labels.write_text(text)
    write_fundus(tmp_path / "a.jpg", 1)
    with pytest.raises(EffdrError, match=match) as error:
        scan("csv", tmp_path)
    message = str(error.value)
    assert message.startswith(f"{labels}: ") and "\n" not in message and len(message) < 300


def test_label_files_keep_spaces_in_names_and_reject_empty_paths(tmp_path):
    write_fundus(tmp_path / "my photo.jpg", 1)
    write_fundus(tmp_path / "b.jpg", 2)
    # A byte-order mark, CRLF line ends, spaces around values and a row without a path.
    (tmp_path / "labels.csv").write_bytes(
        "\ufeffpath , label\r\nmy photo.jpg,1\r\n  b.jpg , 2\r\n,3\r\n\r\n".encode()
    )
    records, rejects = scan("csv", tmp_path)
    assert {k: r.label for k, r in records.items()} == {"my photo.jpg": 1, "b.jpg": 2}
    assert rejects == [Reject(f"{tmp_path / 'labels.csv'}:4", "empty path")]

    (tmp_path / "train.csv").write_text("id_code,diagnosis\n,2\n")
    _, rejects = scan("aptos2019", tmp_path)
    assert rejects == [Reject(f"{tmp_path / 'train.csv'}:2", "empty id_code")]


def test_folder_symlinks_stay_inside_data_dir(tmp_path):
    data = tmp_path / "graded"
    secret = write_fundus(tmp_path / "outside" / "secret.jpg", 1)
    write_fundus(data / "0" / "a.jpg", 2)
    write_fundus(data / "raw" / "b.jpg", 3)
    (data / "1").mkdir()
    os.symlink(secret, data / "1" / "leak.jpg")  # a file leading out
    os.symlink(data / "0" / "a.jpg", data / "1" / "again.jpg")  # a file inside
    os.symlink(tmp_path / "outside", data / "2")  # a folder leading out
    os.symlink(data / "raw", data / "3")  # a folder inside
    os.symlink(data / "raw", data / "4")  # the same folder again
    os.symlink(data, data / "0" / "loop")  # back to the top
    records, rejects = scan("folder", data)
    assert sorted(records) == ["0/a.jpg", "1/again.jpg", "3/b.jpg"]
    assert sorted((os.path.relpath(r.path, data), r.reason) for r in rejects) == [
        ("0/loop", "symlink loop: leads to a folder above it"),
        ("1/leak.jpg", "symlink leads outside data_dir"),
        ("2", "symlink leads outside data_dir"),
        ("4", "a second symlink to the same folder"),
        ("raw/b.jpg", "folder 'raw' is not a grade: label 'raw' is not an integer"),
    ]

    # Layouts with fixed folders: a link out is a reject, a second file of the same name too.
    (tmp_path / "aptos" / "train_images" / "sub").mkdir(parents=True)
    os.symlink(secret, tmp_path / "aptos" / "train_images" / "x.png")
    write_fundus(tmp_path / "aptos" / "train_images" / "y.png", 1)
    write_fundus(tmp_path / "aptos" / "train_images" / "sub" / "y.png", 2)
    (tmp_path / "aptos" / "train.csv").write_text("id_code,diagnosis\nx,1\ny,2\n")
    records, rejects = scan("aptos2019", tmp_path / "aptos")
    folder = tmp_path / "aptos" / "train_images"
    assert list(records) == ["y"] and records["y"].path == str(folder / "y.png")
    assert sorted((os.path.relpath(r.path, folder), r.reason) for r in rejects) == [
        ("sub/y.png", f"same name as {folder / 'y.png'}: which one a label means is unknown"),
        ("x.png", "file not found"),
        ("x.png", "symlink leads outside data_dir"),
    ]


def test_eval_reads_image_lists_like_label_files(tmp_path):
    from effdr_tf.evaluation.predict import list_images

    images = tmp_path / "photos.csv"
    images.write_bytes("\ufeffImage,grade\r\nsub/my photo.jpg,1\r\n b.jpg \r\n,\r\n".encode())
    assert list_images(str(images)) == [
        str(tmp_path / "sub" / "my photo.jpg"),
        str(tmp_path / "b.jpg"),
    ]
    images.write_text("path,image,path\na.jpg,b.jpg,c.jpg\n")
    with pytest.raises(EffdrError, match="photos.csv: duplicate column name.s. path$"):
        list_images(str(images))
