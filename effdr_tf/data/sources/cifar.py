"""CIFAR-10 and CIFAR-100, for the thesis's CIFAR experiments.

Reads the official python tarballs (``cifar-10-python.tar.gz``, ``cifar-100-python.tar.gz``) or
their extracted folders in DIR, or a tfds data dir holding ``cifar10``/``cifar100`` TFRecords.
Images are stored losslessly (PNG) at their native 32 px unless ``--image_size`` says otherwise.
"""

import dataclasses
import glob
import io
import os
import pickle
import tarfile

import cv2
import numpy as np

from effdr_tf.data.schema import Record
from effdr_tf.data.sources import base
from effdr_tf.errors import EffdrError


class _ArraysOnly(pickle.Unpickler):
    """The CIFAR pickles hold dicts of numpy arrays; nothing else may be constructed."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")


@dataclasses.dataclass
class Cifar(base.Source):
    name = "cifar10"
    num_classes = 10
    default_preprocess = "none"
    default_image_size = 32
    archive = "cifar-10-python.tar.gz"
    folder = "cifar-10-batches-py"
    batches = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    label_key = b"labels"

    def _tfds_files(self, split):
        pattern = os.path.join(self.data_dir, "**", f"{self.name}-{split}.tfrecord*")
        return sorted(glob.glob(pattern, recursive=True))

    def check(self):
        super().check()
        options = [os.path.join(self.data_dir, p) for p in (self.archive, self.folder)]
        if not any(os.path.exists(p) for p in options) and not self._tfds_files("train"):
            raise EffdrError(
                f"{self.data_dir}: no {self.archive}, {self.folder}/ or tfds {self.name} TFRecords"
            )

    def _read_batches(self):
        archive = os.path.join(self.data_dir, self.archive)
        folder = os.path.join(self.data_dir, self.folder)
        for split, names in self.batches.items():
            for name in names:
                if os.path.isdir(folder):
                    with open(os.path.join(folder, name), "rb") as f:
                        raw = f.read()
                    origin = os.path.join(folder, name)
                else:
                    with tarfile.open(archive) as tar:
                        raw = tar.extractfile(f"{self.folder}/{name}").read()
                    origin = f"{archive}#{name}"
                batch = _ArraysOnly(io.BytesIO(raw), encoding="bytes").load()
                images = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32)
                yield split, origin, images.transpose(0, 2, 3, 1), batch[self.label_key]

    def _read_tfds(self):
        import tensorflow as tf

        features = {
            "image": tf.io.FixedLenFeature([], tf.string),
            "label": tf.io.FixedLenFeature([], tf.int64),
        }
        for split in ("train", "test"):
            files = self._tfds_files(split)
            for n, raw in enumerate(tf.data.TFRecordDataset(files)):
                example = tf.io.parse_single_example(raw, features)
                yield split, f"{files[0]}#{n}", example["image"].numpy(), int(example["label"])

    def scan(self):
        if (
            self._tfds_files("train")
            and not os.path.exists(os.path.join(self.data_dir, self.archive))
            and not os.path.isdir(os.path.join(self.data_dir, self.folder))
        ):
            for split, origin, png, label in self._read_tfds():
                name = origin.rsplit("#", 1)[1]
                yield Record(
                    path=origin, label=label, id=f"{split}/{int(name):05d}", split=split, data=png
                )
            return
        counters = {}
        for split, origin, images, labels in self._read_batches():
            for image, label in zip(images, labels, strict=True):
                n = counters.get(split, 0)
                counters[split] = n + 1
                ok, png = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))
                yield Record(
                    path=f"{origin}:{n}",
                    label=int(label),
                    id=f"{split}/{n:05d}",
                    split=split,
                    data=png.tobytes(),
                )


@dataclasses.dataclass
class Cifar100(Cifar):
    name = "cifar100"
    num_classes = 100
    archive = "cifar-100-python.tar.gz"
    folder = "cifar-100-python"
    batches = {"train": ["train"], "test": ["test"]}
    label_key = b"fine_labels"
