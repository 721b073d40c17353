"""Generic layouts for any clinic's images.

``csv``: ``--data=csv --data_dir=DIR [--labels=FILE]`` reads FILE (default ``DIR/labels.csv``)
with columns ``path,label`` and optional ``patient_id,eye,split``; paths are relative to DIR
and may not leave it. Without a split column everything is ``train``. A row with an empty label
is rejected ("missing label"), or with ``--unlabelled=keep`` written to the ``unlabelled`` split.

``folder``: ``DIR/<grade>/**`` with one folder per grade (0-4); ``DIR/unlabelled/**`` holds
ungraded photographs (the ``unlabelled`` split).
"""

import dataclasses
import os

from effdr_tf.data import storage
from effdr_tf.data.schema import SPLITS, UNKNOWN_LABEL, UNLABELLED, Record, Reject
from effdr_tf.data.sources import base
from effdr_tf.errors import EffdrError

UNLABELLED_ROWS = ("reject", "keep")


@dataclasses.dataclass
class CsvLabels(base.Source):
    labels: str = ""
    unlabelled: str = "reject"  # rows without a label: "reject" or "keep" (unlabelled split)
    name = "csv"

    @property
    def labels_file(self) -> str:
        return self.labels or os.path.join(self.data_dir, "labels.csv")

    def check(self):
        super().check()
        base.require_file(self.labels_file)
        if self.unlabelled not in UNLABELLED_ROWS:
            raise EffdrError(
                f"--unlabelled={self.unlabelled}: choose one of {', '.join(UNLABELLED_ROWS)}"
            )

    def describe(self):
        labels = self.labels_file
        return {
            **super().describe(),
            "labels": labels if storage.is_url(labels) else os.path.abspath(labels),
        }

    def scan(self):
        rows = base.read_csv(self.labels_file, ("path", "label"))
        rows, empty = base.unnamed(self.labels_file, rows, "path")
        yield from empty
        for row in rows:
            relative = row["path"]
            path = base.inside(self.data_dir, relative)
            if path is None:
                yield Reject(relative, "path escapes data_dir")
                continue
            if not storage.isfile(path):
                yield Reject(path, "file not found")
                continue
            ungraded = not (row["label"] or "").strip()
            if ungraded and self.unlabelled == "keep":
                label, split = UNKNOWN_LABEL, UNLABELLED
            else:
                label = base.parse_label(row["label"], self.num_classes)
                split = row.get("split") or "train"
            eye = (row.get("eye") or "").lower()
            if isinstance(label, str):
                yield Reject(path, label)
            elif split == UNLABELLED and not ungraded:
                yield Reject(path, f"split {UNLABELLED!r} is for rows without a label")
            elif split not in SPLITS:
                yield Reject(path, f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")
            elif eye not in ("left", "right", ""):
                yield Reject(path, f"unknown eye {eye!r} (expected left, right or empty)")
            else:
                yield Record(
                    path=path,
                    label=label,
                    id=relative,
                    patient_id=row.get("patient_id", ""),
                    eye=eye,
                    split=split,
                )


class GradeFolders(base.Source):
    name = "folder"

    def scan(self):
        files, rejects = base.list_files(self.data_dir)
        yield from rejects
        for path in files:
            relative = os.path.relpath(path, self.data_dir)
            top = relative.split(os.sep)[0]
            if top == relative:
                yield Reject(path, "not inside a grade folder")
                continue
            if top == UNLABELLED:
                yield Record(path=path, label=UNKNOWN_LABEL, id=relative, split=UNLABELLED)
                continue
            label = base.parse_label(top, self.num_classes)
            if isinstance(label, str):
                yield Reject(path, f"folder {top!r} is not a grade: {label}")
                continue
            yield Record(path=path, label=label, id=relative, split="train")
