"""IDRiD, sub-challenge B (disease grading).

    DIR/1. Original Images/a. Training Set/IDRiD_001.jpg
    DIR/1. Original Images/b. Testing Set/IDRiD_001.jpg
    DIR/2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv
    DIR/2. Groundtruths/b. IDRiD_Disease Grading_Testing Labels.csv

Label files have the columns ``Image name,Retinopathy grade,Risk of macular edema`` (with stray
empty columns and a trailing space in the header). Training and testing ids overlap, so ids are
prefixed with the split.
"""

import glob
import os

from effdr_tf.data.sources import base
from effdr_tf.errors import EffdrError

SPLITS = {"train": "Training", "test": "Testing"}


class IDRiD(base.Source):
    name = "idrid"

    def _labels(self, word: str) -> str | None:
        found = sorted(
            glob.glob(os.path.join(self.data_dir, "**", f"*{word}*.csv"), recursive=True)
        )
        return found[0] if found else None

    def _images(self, word: str) -> str | None:
        found = sorted(
            p
            for p in glob.glob(os.path.join(self.data_dir, "*", f"*{word}*"))
            if os.path.isdir(p) and "original" in os.path.dirname(p).lower()
        )
        return found[0] if found else None

    def check(self):
        super().check()
        if self._labels("Training") is None:
            raise EffdrError(
                f"{self.data_dir}: no '*Training*.csv' label file (IDRiD disease grading layout)"
            )

    def scan(self):
        for split, word in SPLITS.items():
            labels = self._labels(word)
            if labels is None:
                continue
            rows = base.read_csv(labels, ("Image name", "Retinopathy grade"))
            rows, empty = base.unnamed(labels, rows, "Image name")
            yield from empty
            folder = self._images(word) or os.path.join(self.data_dir, "1. Original Images", word)
            files = {}
            if os.path.isdir(folder):
                found, rejects = base.list_files(folder, self.data_dir)
                files, twins = base.index_files(
                    found, lambda p, split=split: f"{split}/{base.stem(p)}"
                )
                yield from rejects + twins
            entries = [
                (f"{split}/{r['Image name']}", r["Retinopathy grade"], {"split": split})
                for r in rows
            ]
            yield from base.join_labels(
                entries,
                files,
                self.num_classes,
                missing_path=lambda key, folder=folder: os.path.join(
                    folder, key.split("/", 1)[1] + ".jpg"
                ),
                unlabelled_reason=f"no row in {os.path.basename(labels)}",
            )
