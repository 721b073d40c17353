"""Messidor-2 with the adjudicated grades (Krause et al. 2018).

    DIR/messidor_data.csv   image_id,adjudicated_dr_grade,adjudicated_dme,adjudicated_gradable
    DIR/IMAGES/{image_id}   (image_id carries the extension)

Images adjudicated ungradable are excluded and counted in rejects.csv. Every image goes to
``train``; the builder carves validation out of it (evaluate on any split).
"""

import os

from effdr_tf.data.schema import Reject
from effdr_tf.data.sources import base

LABELS = "messidor_data.csv"


class Messidor2(base.Source):
    name = "messidor2"

    def check(self):
        super().check()
        base.require_file(os.path.join(self.data_dir, LABELS))

    def scan(self):
        columns = ("image_id", "adjudicated_dr_grade", "adjudicated_gradable")
        labels = os.path.join(self.data_dir, LABELS)
        rows, empty = base.unnamed(labels, base.read_csv(labels, columns), "image_id")
        yield from empty
        folder = os.path.join(self.data_dir, "IMAGES")
        files = {}
        if os.path.isdir(folder):
            found, rejects = base.list_files(folder, self.data_dir)
            files, twins = base.index_files(found, os.path.basename)
            yield from rejects + twins
        entries = []
        for row in rows:
            if row["adjudicated_gradable"] == "0":
                files_path = files.pop(row["image_id"], os.path.join(folder, row["image_id"]))
                yield Reject(files_path, "ungradable (adjudicated_gradable=0), excluded")
                continue
            fields = {"split": "train"}
            entries.append((row["image_id"], row["adjudicated_dr_grade"], fields))
        yield from base.join_labels(
            entries,
            files,
            self.num_classes,
            missing_path=lambda key: os.path.join(folder, key),
            unlabelled_reason=f"no row in {LABELS}",
        )
