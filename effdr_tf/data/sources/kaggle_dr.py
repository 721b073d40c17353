"""Kaggle 2015 Diabetic Retinopathy Detection (EyePACS).

    DIR/trainLabels.csv            image,level
    DIR/train/{patient}_{left|right}.jpeg
    DIR/retinopathy_solution.csv   image,level,Usage   (optional: the test labels)
    DIR/test/{patient}_{left|right}.jpeg

Test images go to ``public_test`` or ``private_test`` by Usage; there is no validation split
(the builder carves one out of train by patient). Without the solution file the test images
are the ``unlabelled`` split (for self-training).
"""

import os

from effdr_tf.data import storage
from effdr_tf.data.schema import Reject
from effdr_tf.data.sources import base

USAGE_SPLITS = {"public": "public_test", "private": "private_test"}


def patient_and_eye(image_id: str) -> tuple[str, str]:
    patient, _, eye = image_id.rpartition("_")
    if eye in ("left", "right") and patient:
        return patient, eye
    return image_id, ""


def _fields(image_id: str, split: str) -> dict:
    patient, eye = patient_and_eye(image_id)
    return {"patient_id": patient, "eye": eye, "split": split}


class KaggleDR(base.Source):
    name = "kaggle_dr"

    def check(self):
        super().check()
        base.require_file(os.path.join(self.data_dir, "trainLabels.csv"))

    def _files(self, *folders: str) -> tuple[dict, list[Reject]]:
        found, rejects = [], []
        for folder in folders:
            folder = os.path.join(self.data_dir, folder)
            if storage.isdir(folder):
                files, bad = base.list_files(folder, self.data_dir)
                found += files
                rejects += bad
        files, twins = base.index_files(found, base.stem)
        return files, rejects + twins

    def scan(self):
        labels = os.path.join(self.data_dir, "trainLabels.csv")
        rows, empty = base.unnamed(labels, base.read_csv(labels, ("image", "level")), "image")
        yield from empty
        entries = [(r["image"], r["level"], _fields(r["image"], "train")) for r in rows]
        solution = os.path.join(self.data_dir, "retinopathy_solution.csv")
        has_test = storage.exists(solution)
        files, rejects = self._files("train", "test")
        yield from rejects
        if not has_test:
            graded = {key for key, _, _ in entries}
            test_keys = set(self._files("test")[0])
            entries += [(key, None, _fields(key, "")) for key in sorted(test_keys - graded)]
        if has_test:
            rows = base.read_csv(solution, ("image", "level", "Usage"))
            rows, empty = base.unnamed(solution, rows, "image")
            yield from empty
            for row in rows:
                split = USAGE_SPLITS.get(row["Usage"].lower())
                if split is None:
                    default = os.path.join(self.data_dir, "test", f"{row['image']}.jpeg")
                    path = files.pop(row["image"], default)
                    yield Reject(path, f"unknown Usage {row['Usage']!r} (expected Public/Private)")
                    continue
                entries.append((row["image"], row["level"], _fields(row["image"], split)))
        yield from base.join_labels(
            entries,
            files,
            self.num_classes,
            missing_path=lambda key: os.path.join(self.data_dir, "train_or_test", f"{key}.jpeg"),
            unlabelled_reason="no label in trainLabels.csv or retinopathy_solution.csv",
        )
