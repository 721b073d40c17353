"""What every source adapter shares: reading label files, checking paths and labels."""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Iterator

import numpy as np

from effdr_tf.data import fundus, storage
from effdr_tf.data.schema import UNKNOWN_LABEL, UNLABELLED, Record, Reject
from effdr_tf.errors import EffdrError

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".tif", ".tiff", ".bmp")


@dataclasses.dataclass
class Source:
    """A dataset layout. Subclasses set ``name`` and implement ``scan``.

    ``scan`` runs once in the main process and yields a ``Record`` or a ``Reject`` for every
    input it sees (image files and label rows alike), so nothing is dropped unaccounted; what
    it could not settle per input (a missing optional file, say) it keeps for ``warnings``.
    ``load`` runs in worker processes and returns the RGB image of one record.

    ``near_duplicates`` is True for a source whose photographs may repeat (re-exported, or
    graded twice) with no patient id to tie the copies: the builder then groups them by a
    perceptual hash before carving validation (``builder.group_near_duplicates``).
    """

    data_dir: str = ""
    name = "source"
    num_classes = 5
    default_preprocess = "crop"
    default_image_size = 224
    near_duplicates = False

    def check(self) -> None:
        """Raises ``EffdrError`` for a missing data_dir or label file, before any work."""
        if not storage.isdir(self.data_dir):
            raise EffdrError(f"{self.data_dir}: data_dir not found (--data={self.name})")

    def scan(self) -> Iterator[Record | Reject]:
        raise NotImplementedError

    def load(
        self,
        record: Record,
        min_side: int | None = None,
        max_pixels: float | None = fundus.DEFAULT_MAX_PIXELS,
    ) -> np.ndarray:
        """The RGB image; ``min_side`` lets large JPEGs decode at a reduced scale, and images
        over ``max_pixels`` (as their header declares) are rejected before decoding."""
        data = record.data
        if data is None:
            data = fundus.read(record.path, max_pixels)
        return fundus.decode(data, min_side, max_pixels)

    def warnings(self) -> list[str]:
        """One line for each thing the last ``scan`` found that the user should know."""
        return list(getattr(self, "_warnings", ()))

    def describe(self) -> dict:
        """What goes into manifest.json about the source."""
        data_dir = (
            self.data_dir if storage.is_url(self.data_dir) else os.path.abspath(self.data_dir)
        )
        return {"name": self.name, "data_dir": data_dir}


def require_file(path: str, what: str = "label file") -> str:
    if not storage.isfile(path):
        raise EffdrError(f"{path}: {what} not found")
    return path


class Row(dict):
    """One row of a label file: column -> value, and ``line``, where it starts in the file."""

    line: int = 0


def read_table(path: str, *, delimiter: str = ",") -> tuple[list[str], list[Row]]:
    """The header and rows of a CSV file, values stripped of surrounding spaces.

    A byte-order mark and CRLF line ends are accepted. Spaces inside values are kept (file
    names may contain them); spaces around them are not (``a.jpg, 2`` is common in hand-written
    files). Rows with nothing but blanks are skipped.

    Raises:
        EffdrError: one line naming the file (and line) for a file that cannot be read as
            UTF-8 text, duplicate column names (which column to use would be a guess), a NUL
            byte (a UTF-16 or binary file; no path can contain one) or an over-long field.
    """
    rows, line = [], 1
    try:
        with storage.open_text(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter)
            try:
                header = [h.strip() for h in next(reader, [])]
                _check_header(path, header)
                line = reader.line_num + 1
                for values in reader:
                    if any("\0" in v for v in values):
                        raise EffdrError(
                            f"{path}: line {line}: NUL byte (is the file UTF-16 or binary? "
                            "save it as UTF-8 CSV)"
                        )
                    if any(v.strip() for v in values):
                        row = Row(
                            (h, values[i].strip() if i < len(values) else "")
                            for i, h in enumerate(header)
                        )
                        row.line = line
                        rows.append(row)
                    line = reader.line_num + 1
            except csv.Error as e:
                # A field over the limit usually means a quote that is never closed.
                raise EffdrError(f"{path}: line {line}: {e} (an unclosed quote?)") from e
    except UnicodeDecodeError as e:
        raise EffdrError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from e
    except OSError as e:
        raise EffdrError(f"{path}: cannot read: {e.strerror or e}") from e
    return header, rows


def _check_header(path: str, header: list[str]) -> None:
    if any("\0" in h for h in header):
        raise EffdrError(f"{path}: line 1: NUL byte (is the file UTF-16 or binary?)")
    # Stray empty columns (trailing commas) are common and harmless; named ones are not.
    named = [h for h in header if h]
    duplicates = sorted({h for h in named if named.count(h) > 1})
    if duplicates:
        raise EffdrError(f"{path}: duplicate column name(s) {', '.join(duplicates)}")


def read_csv(path: str, required: tuple[str, ...], *, delimiter: str = ",") -> list[Row]:
    """Rows of a label file (``read_table``) after checking the required columns exist."""
    require_file(path)
    header, rows = read_table(path, delimiter=delimiter)
    if not header:
        raise EffdrError(f"{path}: empty label file")
    absent = [c for c in required if c not in header]
    if absent:
        raise EffdrError(f"{path}: missing column(s) {', '.join(absent)} (has {', '.join(header)})")
    return rows


def unnamed(path: str, rows: list[Row], column: str) -> tuple[list[Row], list[Reject]]:
    """Splits off the rows whose ``column`` is empty: they name no file, so each becomes a
    reject that points at its line in the label file."""
    named = [r for r in rows if r[column]]
    empty = [Reject(f"{path}:{r.line}", f"empty {column}") for r in rows if not r[column]]
    return named, empty


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
    root = storage.normalise(data_dir)
    path = storage.normalise(os.path.join(root, relative))
    if path != root and path.startswith(root + ("/" if storage.is_url(root) else os.sep)):
        return path
    return None


def _within(root: str, path: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def list_files(folder: str, data_dir: str | None = None) -> tuple[list[str], list[Reject]]:
    """All files under ``folder``, sorted, hidden files included (they are inputs too).

    Symbolic links are followed only where they resolve inside ``data_dir`` (default
    ``folder``), as paths in label files are: a link leading out of it is a reject, never a
    file that is read. A linked folder is listed once: a link back into a folder that holds
    it (a loop) or a second link to the same folder is a reject too, so every entry seen is
    listed or rejected.

    Returns:
        The files (under their paths below ``folder``) and the rejected entries.
    """
    if storage.is_url(folder):  # a bucket: no links, nothing but files and folders
        return storage.walk_files(folder), []
    root = os.path.realpath(data_dir or folder)
    found, rejects, linked = [], [], set()

    def visit(directory: str, above: tuple[str, ...]) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as e:
            rejects.append(Reject(directory, f"cannot list folder: {e.strerror or e}"))
            return
        folders = []
        for entry in entries:
            # Only links need resolving: a plain entry below a folder inside root is inside.
            target = os.path.realpath(entry.path) if entry.is_symlink() else entry.path
            if entry.is_symlink() and not _within(root, target):
                rejects.append(Reject(entry.path, "symlink leads outside data_dir"))
            elif not entry.is_dir():
                # A named pipe or a device would block or never end when read.
                if entry.is_file() or not os.path.exists(entry.path):
                    found.append(entry.path)
                else:
                    rejects.append(Reject(entry.path, fundus.NOT_A_REGULAR_FILE))
            elif not entry.is_symlink():
                folders.append(entry.path)
            elif target in above:
                rejects.append(Reject(entry.path, "symlink loop: leads to a folder above it"))
            elif target in linked:
                rejects.append(Reject(entry.path, "a second symlink to the same folder"))
            else:
                linked.add(target)
                folders.append(entry.path)
        for path in folders:  # files first, then folders: the order os.walk gives
            visit(path, (*above, os.path.realpath(path)))

    real = os.path.realpath(folder)
    if not _within(root, real):
        return [], [Reject(folder, "symlink leads outside data_dir")]
    visit(folder, (real,))
    return found, rejects


def index_files(files: list[str], key) -> tuple[dict[str, str], list[Reject]]:
    """``key(path) -> path`` for label rows to find their file; a file whose key an earlier one
    already has (the same name in two folders) is a reject, not silently replaced."""
    found, rejects = {}, []
    for path in files:
        k = key(path)
        if k in found:
            rejects.append(
                Reject(path, f"same name as {found[k]}: which one a label means is unknown")
            )
        else:
            found[k] = path
    return found, rejects


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
        entries: (key, label text, Record fields) per label row; key matches ``files``. A
            label text of None is an ungraded photograph: label -1 in the ``unlabelled`` split.
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
        if label_text is None:
            fields = {**fields, "split": UNLABELLED}
            yield Record(path=path, label=UNKNOWN_LABEL, **{"id": key, **fields})
            continue
        label = parse_label(label_text, num_classes)
        if isinstance(label, str):
            yield Reject(path, label)
            continue
        yield Record(path=path, label=label, **{"id": key, **fields})
    for key, path in sorted(files.items()):
        if key not in named:
            yield Reject(path, unlabelled_reason)
