"""APTOS 2019 Blindness Detection.

    DIR/train.csv             id_code,diagnosis
    DIR/train_images/{id_code}.png
    DIR/test.csv              id_code            (optional)
    DIR/test_images/{id_code}.png

The training images are the ``train`` split. The competition's test labels were never
published: its test images, where present, are the ``unlabelled`` split (for self-training).
Patients are unknown, so each image is its own group, except that near-duplicate photographs
(the same photograph exported twice, some of the copies graded differently) are grouped by the
builder before it carves validation (``near_duplicates = True``; see ``data.near_duplicates``).
"""

import os

from effdr_tf.data import storage
from effdr_tf.data.sources import base


class Aptos2019(base.Source):
    name = "aptos2019"
    near_duplicates = True

    def check(self):
        super().check()
        base.require_file(os.path.join(self.data_dir, "train.csv"))

    def _files(self, folder: str):
        files = {}
        if storage.isdir(folder):
            found, rejects = base.list_files(folder, self.data_dir)
            files, twins = base.index_files(found, base.stem)
            yield from rejects + twins
        return files

    def scan(self):
        labels = os.path.join(self.data_dir, "train.csv")
        rows = base.read_csv(labels, ("id_code", "diagnosis"))
        rows, empty = base.unnamed(labels, rows, "id_code")
        yield from empty
        folder = os.path.join(self.data_dir, "train_images")
        files = yield from self._files(folder)
        yield from base.join_labels(
            [(r["id_code"], r["diagnosis"], {"split": "train"}) for r in rows],
            files,
            self.num_classes,
            missing_path=lambda key: os.path.join(folder, f"{key}.png"),
            unlabelled_reason="no label in train.csv",
        )
        listing = os.path.join(self.data_dir, "test.csv")
        if not storage.exists(listing):
            return
        rows = base.read_csv(listing, ("id_code",))
        rows, empty = base.unnamed(listing, rows, "id_code")
        yield from empty
        test_folder = os.path.join(self.data_dir, "test_images")
        files = yield from self._files(test_folder)
        yield from base.join_labels(
            [(r["id_code"], None, {}) for r in rows],
            files,
            self.num_classes,
            missing_path=lambda key: os.path.join(test_folder, f"{key}.png"),
            unlabelled_reason="not listed in test.csv",
        )
