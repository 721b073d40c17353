"""A folder nobody cleaned, through the builder and ``eval.py --images``: exit 0, every file
accounted for with a reason, the good photographs written and graded, memory bounded."""

import csv
import os
import sys

from effdr_tf.training import loop
from tests import hostile_corpus, memory
from tests.conftest import REPO

# Peak resident memory of the command's process tree (the main process with TensorFlow loaded,
# and the builder's workers), as the sum of each process's own peak: measured 845 MiB for the
# builder (two workers) and 783 MiB for eval on 2 cores; with the budget lifted
# (--max_megapixels=5000) the same build reaches 5782 MiB.
BUILDER_PEAK_MIB = 1536
EVAL_PEAK_MIB = 1536


def _measured(*args):
    """Runs ``python args``; the result and the peak RSS (MiB) of its process tree, the sum of
    every process's own peak (an upper bound: the peaks need not coincide)."""
    result, peak = memory.run_measured(args, cwd=REPO)
    return result, peak["total_mib"]


def _rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_a_hostile_folder_is_built_and_graded_with_every_file_accounted_for(tmp_path):
    corpus = tmp_path / "corpus"
    expected = hostile_corpus.make_corpus(corpus, tmp_path / "outside.jpg")
    assert sum(expected.values()) == 12 and len(expected) == 32

    # The builder: grade folders, two workers.
    shards = tmp_path / "shards"
    built, peak = _measured(
        "tfrecord_builder.py", "--data=folder", f"--data_dir={corpus}", f"--output_dir={shards}",
        "--image_size=64", "--workers=2", "--val_fraction=0",
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    assert "Traceback" not in built.stderr
    print(f"builder peak RSS {peak:.0f} MiB")
    assert peak < BUILDER_PEAK_MIB, f"builder peak RSS {peak:.0f} MiB"
    rejects = {row["path"]: row["reason"] for row in _rows(shards / "rejects.csv")}
    from tests.test_builder import read_split

    written = {r["image/id"].decode() for r in read_split(str(shards), "train")}
    for relative, good in expected.items():
        path = str(corpus / relative)
        if good:
            assert relative in written and path not in rejects, relative
        else:
            assert rejects.get(path) and relative not in written, (relative, rejects.get(path))
    assert len(written) + len(rejects) == len(expected)
    assert "over the 50 megapixel limit" in rejects[str(corpus / "0/png-bomb-24000x24000.png")]
    assert "outside data_dir" in rejects[str(corpus / "4/passwd.jpg")]
    assert "not a regular file" in rejects[str(corpus / "1/pipe.jpg")]

    # A model trained on what was written, then eval --images over the same folder.
    sys.path.insert(0, str(REPO / "tests"))
    import tiny_config

    config = tiny_config.get_config()
    config.data.data_dir = str(shards)
    config.train.epochs = 1
    config.train.steps_per_epoch = 1
    config.train.export = True
    loop.train(config, str(tmp_path / "run"), progress=False)
    out = tmp_path / "graded"
    graded, peak = _measured(
        "eval.py", f"--model_dir={tmp_path / 'run'}", f"--images={corpus}", f"--out={out}"
    )
    assert graded.returncode == 0, graded.stderr[-3000:]
    assert "Traceback" not in graded.stderr
    print(f"eval peak RSS {peak:.0f} MiB")
    assert peak < EVAL_PEAK_MIB, f"eval peak RSS {peak:.0f} MiB"
    rows = {row["path"]: row for row in _rows(out / "predictions.csv")}
    # eval grades any photograph it is given: the link out of the folder and the one in a
    # folder that is not a grade are photographs too.
    gradable = {r for r, good in expected.items() if good}
    gradable |= {"3/outside.jpg", "7/wrong-grade.jpg"}
    assert set(rows) == {str(corpus / r) for r in expected}
    for relative in expected:
        row = rows[str(corpus / relative)]
        if relative in gradable:
            assert row["grade"] != "" and not row["error"], (relative, row["error"])
        else:
            assert row["grade"] == "" and row["error"], relative
    reason = rows[str(corpus / "3/jpeg-20000x20000.jpg")]["error"]
    assert "20000x20000" in reason and "megapixel limit" in reason
    assert "not a regular file" in rows[str(corpus / "1/pipe.jpg")]["error"]
    assert "not an image file name" in rows[str(corpus / "notes.txt")]["error"]
    assert os.path.exists(tmp_path / "outside.jpg")
