"""File access for local paths and remote URLs (``gs://`` and anything ``tf.io.gfile`` knows).

Local paths use plain Python I/O, so code that only touches local files (the models under a
non-TensorFlow Keras backend, say) never imports TensorFlow. Remote URLs go through
``tf.io.gfile``, imported on first use.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re

from effdr_tf.errors import EffdrError

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_remote(path: str) -> bool:
    return bool(_URL.match(str(path)))


def _gfile():
    try:
        import tensorflow as tf
    except ImportError as e:  # pragma: no cover - TensorFlow is a dependency of every setup
        raise EffdrError("remote paths need TensorFlow (tf.io.gfile)") from e
    return tf.io.gfile


def exists(path: str) -> bool:
    if is_remote(path):
        return _gfile().exists(path)
    return os.path.exists(path)


def read_bytes(path: str) -> bytes:
    """Reads a whole file; a missing or unreadable file is an ``EffdrError`` naming it."""
    try:
        if is_remote(path):
            with _gfile().GFile(path, "rb") as f:
                return f.read()
        with open(path, "rb") as f:
            return f.read()
    except EffdrError:
        raise
    except Exception as e:  # noqa: BLE001 - every failure becomes one line naming the file
        reason = "no such file" if not exists(path) else _first_line(e)
        raise EffdrError(f"{path}: cannot read: {reason}") from e


def publish(local_tmp: str, dst: str) -> None:
    """Moves a finished local file to ``dst`` atomically (rename) or by copy for remote ``dst``."""
    if is_remote(dst):
        gfile = _gfile()
        gfile.copy(local_tmp, dst, overwrite=True)
        os.remove(local_tmp)
    else:
        os.replace(local_tmp, dst)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def sha256(path: str) -> str:
    """Hex SHA-256 of a local or gs:// file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with _gfile().GFile(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomic(path: str, data: bytes | str) -> None:
    """Writes ``path`` through a temporary name, so readers never see half a file."""
    tmp = path + ".tmp"
    if not is_remote(path):
        with open(tmp, "wb") as f:
            f.write(data if isinstance(data, bytes) else data.encode("utf-8"))
        os.replace(tmp, path)
        return
    with _gfile().GFile(tmp, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    _gfile().rename(tmp, path, overwrite=True)


def replace_dir(tmp: str, target: str) -> None:
    """Puts the finished folder ``tmp`` at ``target``: a rename on local disk; on object
    stores (gs://, ram://), where folders cannot be renamed, a copy of every file."""
    gfile = _gfile()
    remove_tree(target)
    if not is_remote(tmp):
        os.replace(tmp, target)
        return
    for root, _, files in gfile.walk(tmp):
        relative = root[len(tmp) :].lstrip("/")
        folder = f"{target}/{relative}" if relative else target
        gfile.makedirs(folder)
        for name in files:
            gfile.copy(f"{root}/{name}", f"{folder}/{name}", overwrite=True)
    remove_tree(tmp)


def temporary_name(path: str) -> str:
    """Where to write ``path`` before it is complete: beside it, under a name that ``path`` is
    not a prefix of (object stores such as ram:// match folders by prefix)."""
    parent, name = path.rstrip("/").rsplit("/", 1)
    return f"{parent}/.tmp-{name}"


def remove_tree(path: str) -> None:
    """Deletes a folder and everything under it, if it exists. On object stores a "folder" may
    exist only as the prefix of its files, which ``rmtree`` does not always find: the files are
    then deleted one by one."""
    gfile = _gfile()
    if not gfile.exists(path):
        return
    import tensorflow as tf

    try:
        gfile.rmtree(path)
    except tf.errors.NotFoundError:
        for root, _, files in list(gfile.walk(path)):
            for name in files:
                with contextlib.suppress(tf.errors.NotFoundError):
                    gfile.remove(f"{root}/{name}")
