"""DDR (Li et al. 2019), the grading part.

    DIR/DR_grading/{train,valid,test}/*.jpg
    DIR/DR_grading/{train,valid,test}.txt      "name label" per line; label 5 = ungradable

DIR may also be the DR_grading folder itself. Ungradable images are excluded and counted.
"""

import os

from effdr_tf.data import storage
from effdr_tf.data.schema import Reject
from effdr_tf.data.sources import base
from effdr_tf.errors import EffdrError

SPLITS = {"train": "train", "valid": "validation", "test": "test"}
UNGRADABLE = "5"


class DDR(base.Source):
    name = "ddr"

    @property
    def root(self) -> str:
        nested = os.path.join(self.data_dir, "DR_grading")
        return nested if storage.isdir(nested) else self.data_dir

    def check(self):
        super().check()
        if not any(storage.exists(os.path.join(self.root, f"{s}.txt")) for s in SPLITS):
            raise EffdrError(f"{self.root}: label file not found (train.txt, valid.txt, test.txt)")

    def scan(self):
        for folder, split in SPLITS.items():
            labels = os.path.join(self.root, f"{folder}.txt")
            if not storage.exists(labels):
                continue
            images = os.path.join(self.root, folder)
            # Ids are file names, unique within a split only: key them by split.
            files = {}
            if storage.isdir(images):
                found, rejects = base.list_files(images, self.data_dir)
                files, twins = base.index_files(
                    found, lambda p, folder=folder: f"{folder}/{os.path.basename(p)}"
                )
                yield from rejects + twins
            entries = []
            with storage.open_text(labels, encoding="utf-8") as f:
                for line in f:
                    parts = line.split()
                    if not parts:
                        continue
                    name, label = parts[0], (parts[1] if len(parts) > 1 else "")
                    if label == UNGRADABLE:
                        path = files.pop(f"{folder}/{name}", os.path.join(images, name))
                        yield Reject(path, "ungradable (DDR grade 5), excluded")
                        continue
                    entries.append((f"{folder}/{name}", label, {"split": split}))
            yield from base.join_labels(
                entries,
                files,
                self.num_classes,
                missing_path=lambda key: os.path.join(self.root, key),
                unlabelled_reason=f"no line in {folder}.txt",
            )
