"""What every source adapter shares: reading label files, checking paths and labels."""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Iterator

import numpy as np

from effdr_tf.data import fundus
from effdr_tf.data.schema import Record, Reject
from effdr_tf.errors import EffdrError

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".tif", ".tiff", ".bmp")


@dataclasses.dataclass
class Source:
    """A dataset layout. Subclasses set ``name`` and implement ``scan``.

    ``scan`` runs once in the main process and yields a ``Record`` or a ``Reject`` for every
    input it sees (image files and label rows alike), so nothing is dropped unaccounted.
    ``load`` runs in worker processes and returns the RGB image of one record.
    """

    data_dir: str = ""
    name = "source"
    num_classes = 5
    default_preprocess = "crop"
    default_image_size = 224

    def check(self) -> None:
        """Raises ``EffdrError`` for a missing data_dir or label file, before any work."""
        if not os.path.isdir(self.data_dir):
            raise EffdrError(f"{self.data_dir}: data_dir not found (--data={self.name})")

    def scan(self) -> Iterator[Record | Reject]:
        raise NotImplementedError

    def load(self, record: Record, min_side: int | None = None) -> np.ndarray:
        """The RGB image; ``min_side`` lets large JPEGs decode at a reduced scale."""
        if record.data is not None:
            return fundus.decode(record.data, min_side)
        try:
            with open(record.path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise fundus.RejectedImageError(f"cannot read file: {e.strerror or e}") from e
        return fundus.decode(data, min_side)

    def describe(self) -> dict:
        """What goes into manifest.json about the source."""
        return {"name": self.name, "data_dir": os.path.abspath(self.data_dir)}


def require_file(path: str, what: str = "label file") -> str:
    if not os.path.isfile(path):
        raise EffdrError(f"{path}: {what} not found")
    return path


def read_csv(path: str, required: tuple[str, ...], *, delimiter: str = ",") -> list[dict]:
    """Rows of a CSV file as dicts with stripped keys and values; checks required columns."""
    require_file(path)
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration as e:
            raise EffdrError(f"{path}: empty label file") from e
        absent = [c for c in required if c not in header]
        if absent:
            raise EffdrError(
                f"{path}: missing column(s) {', '.join(absent)} (has {', '.join(header)})"
            )
        rows = []
        for values in reader:
            if not any(v.strip() for v in values):
                continue
            row = {h: (values[i].strip() if i < len(values) else "") for i, h in enumerate(header)}
            rows.append(row)
    return rows


def parse_label(value: str, num_classes: int) -> int | str:
    """The integer label, or the reason it is not one."""
    value = (value or "").strip()
    if not value:
        return "missing label"
    try:
        number = float(value)
    except ValueError:
        return f"label {value!r} is not an integer"
    if not number.is_integer():
        return f"label {value!r} is not an integer"
    label = int(number)
    if not 0 <= label < num_classes:
        return f"label {label} out of range 0..{num_classes - 1}"
    return label


def inside(data_dir: str, relative: str) -> str | None:
    """The absolute path of ``relative`` under ``data_dir``, or None if it escapes it."""
    root = os.path.realpath(data_dir)
    path = os.path.realpath(os.path.join(root, relative))
    if path != root and path.startswith(root + os.sep):
        return path
    return None


def list_files(folder: str) -> list[str]:
    """All files under ``folder``, sorted, hidden files included (they are inputs too)."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found.extend(os.path.join(root, f) for f in sorted(files))
    return found


def stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def join_labels(
    entries: list[tuple[str, str, dict]],
    files: dict[str, str],
    num_classes: int,
    *,
    missing_path,
    unlabelled_reason: str,
) -> Iterator[Record | Reject]:
    """Pairs label rows with image files, accounting for both sides.

    Args:
        entries: (key, label text, Record fields) per label row; key matches ``files``.
        files: key -> image path for every file found.
        num_classes: labels must lie in 0..num_classes-1.
        missing_path: key -> the path to report when a row's file does not exist.
        unlabelled_reason: the reject reason for files no row names.
    """
    named = set()
    for key, label_text, fields in entries:
        named.add(key)
        path = files.get(key)
        if path is None:
            yield Reject(missing_path(key), "file not found")
            continue
        label = parse_label(label_text, num_classes)
        if isinstance(label, str):
            yield Reject(path, label)
            continue
        yield Record(path=path, label=label, **{"id": key, **fields})
    for key, path in sorted(files.items()):
        if key not in named:
            yield Reject(path, unlabelled_reason)
