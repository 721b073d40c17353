"""APTOS 2019 Blindness Detection.

    DIR/train.csv             id_code,diagnosis
    DIR/train_images/{id_code}.png

Only the labelled training images are written (the competition's test labels were never
published); patients are unknown, so each image is its own group.
"""

import os

from effdr_tf.data.sources import base


class Aptos2019(base.Source):
    name = "aptos2019"

    def check(self):
        super().check()
        base.require_file(os.path.join(self.data_dir, "train.csv"))

    def scan(self):
        labels = os.path.join(self.data_dir, "train.csv")
        rows = base.read_csv(labels, ("id_code", "diagnosis"))
        rows, empty = base.unnamed(labels, rows, "id_code")
        yield from empty
        folder = os.path.join(self.data_dir, "train_images")
        files = {}
        if os.path.isdir(folder):
            found, rejects = base.list_files(folder, self.data_dir)
            files, twins = base.index_files(found, base.stem)
            yield from rejects + twins
        yield from base.join_labels(
            [(r["id_code"], r["diagnosis"], {"split": "train"}) for r in rows],
            files,
            self.num_classes,
            missing_path=lambda key: os.path.join(folder, f"{key}.png"),
            unlabelled_reason="no label in train.csv",
        )
