"""What sources yield and the builder writes: one record per input image, or a reject."""

from __future__ import annotations

import dataclasses

# Split names: Kaggle 2015 adds public_test and private_test; ``unlabelled`` holds
# photographs without a grade (label -1), for self-training, and only those.
UNLABELLED = "unlabelled"
SPLITS = ("train", "validation", "test", "public_test", "private_test", UNLABELLED)
UNKNOWN_LABEL = -1
EYES = ("left", "right", "")


@dataclasses.dataclass(frozen=True)
class Record:
    """One input image.

    Attributes:
        path: file path (absolute, or a virtual name for generated or in-memory images).
        label: the grade or class; -1 where unknown.
        id: unique within the dataset; written as ``image/id``.
        patient_id: groups images of one patient (both eyes); the id itself when unknown.
        eye: ``left``, ``right`` or empty.
        split: one of ``SPLITS``.
        data: the encoded image when it does not live in a file of its own (CIFAR).
    """

    path: str
    label: int
    id: str
    patient_id: str = ""
    eye: str = ""
    split: str = "train"
    data: bytes | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def group(self) -> str:
        """What must stay together when splitting: the patient, else the image."""
        return self.patient_id or self.id


@dataclasses.dataclass(frozen=True)
class Reject:
    """An input that is not written, and why."""

    path: str
    reason: str
