"""Raw dataset files on a local disk or in a bucket (``gs://``, or any ``tf.io.gfile`` scheme).

The sources and the per-image reader ask here whether a path exists, is a folder or a file,
and open label files, so that ``--data_dir=gs://BUCKET/kaggle`` works as a local folder does
(an Apache Beam job on Dataflow reads its photographs where its workers can reach them).
Local paths take the plain ``os`` calls; only a URL loads TensorFlow, so the builder's
worker processes stay free of it for local data.
"""

from __future__ import annotations

import io
import os
import posixpath

# Folders below a data_dir in a bucket that are listed (a dataset layout has two or three).
MAX_DEPTH = 16


def is_url(path: str) -> bool:
    """True for ``scheme://...`` (``gs://``, ``s3://``, ``ram://``); False for local paths."""
    return "://" in path


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def exists(path: str) -> bool:
    return _gfile().exists(path) if is_url(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    return _gfile().isdir(path) if is_url(path) else os.path.isdir(path)


def isfile(path: str) -> bool:
    if is_url(path):
        gfile = _gfile()
        return gfile.exists(path) and not gfile.isdir(path)
    return os.path.isfile(path)


def open_text(path: str, **kwargs):
    """A text file object; ``kwargs`` as for ``open`` (``newline``, ``encoding``)."""
    if not is_url(path):
        return open(path, **kwargs)
    with _gfile().GFile(path, "rb") as f:
        data = f.read()
    return io.TextIOWrapper(io.BytesIO(data), **kwargs)


def size(path: str) -> int:
    """Bytes in the file at URL ``path``."""
    return _gfile().stat(path).length


def read_bytes(path: str, limit: int | None) -> bytes:
    """At most ``limit`` + 1 bytes of the file at URL ``path`` (all of it for None)."""
    with _gfile().GFile(path, "rb") as f:
        return f.read() if limit is None else f.read(limit + 1)


def walk_files(folder: str) -> list[str]:
    """Every file below the URL ``folder``, sorted.

    One glob per level (``folder/*``, ``folder/*/*``, ...): ``listdir`` is not reliable on
    every scheme (``ram://`` lists ``train`` and ``trainLabels.csv`` alike), and asking
    ``isdir`` of each path would be a request per photograph on a bucket. A match is a folder
    when another match lies below it.
    """
    gfile = _gfile()
    folder = folder.rstrip("/")
    matches, pattern = set(), folder
    for _ in range(MAX_DEPTH):
        pattern += "/*"
        level = gfile.glob(pattern)
        if not level:
            break
        matches.update(m.rstrip("/") for m in level)
    folders = {m.rsplit("/", 1)[0] for m in matches}
    return sorted(matches - folders)


def normalise(path: str) -> str:
    """``path`` without ``.`` and ``..`` steps: ``realpath`` for local paths; for URLs, the
    ``normpath`` of all after the scheme, bucket included, so that ``..`` out of a bucket's
    top folder leaves the bucket too (buckets have no links to resolve)."""
    if not is_url(path):
        return os.path.realpath(path)
    scheme, rest = path.split("://", 1)
    return f"{scheme}://{posixpath.normpath(rest).lstrip('/')}"
