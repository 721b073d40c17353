"""Messidor-2 with the adjudicated grades (Krause et al. 2018).

    DIR/messidor_data.csv   image_id,adjudicated_dr_grade,adjudicated_dme,adjudicated_gradable
    DIR/IMAGES/{image_id}   (image_id carries the extension)
    DIR/messidor-2.csv      left;right   (optional: the examination pairs ADCIS ships)

Images adjudicated ungradable are excluded and counted in rejects.csv. Every image goes to
``train``; the builder carves validation out of it (evaluate on any split).

Each examination is one patient's two eyes (https://www.adcis.net/en/third-party/messidor2/).
With ``messidor-2.csv`` (from the ADCIS download; the grades come from elsewhere) the two
images of an examination share a patient id, the left image's name without its extension,
and carry their eye, so validation never holds the fellow eye of a training image. Without
it, each image is its own group and the build warns.
"""

import os

from effdr_tf.data import storage
from effdr_tf.data.schema import Reject
from effdr_tf.data.sources import base
from effdr_tf.errors import EffdrError

LABELS = "messidor_data.csv"
PAIRS = "messidor-2.csv"


def _key(name: str) -> str:
    """How an image is matched between the two files: by name without extension, whatever
    the case (the two files come from different distributions)."""
    return os.path.splitext(os.path.basename(name.strip()))[0].lower()


def read_pairs(path: str) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """The examinations in ADCIS's ``messidor-2.csv`` (semicolon-separated, ``left;right``).

    Returns:
        image key (``_key``) -> (patient id, eye), and a warning line for each image named in
        more than one examination (only its first is kept).

    Raises:
        EffdrError: the file cannot be read or has no ``left`` and ``right`` columns.
    """
    header, rows = base.read_table(path, delimiter=";")
    columns = {h.lower(): h for h in header}
    if "left" not in columns or "right" not in columns:
        raise EffdrError(
            f"{path}: no left and right columns (has {', '.join(header) or 'nothing'}); "
            "expected ADCIS's examination pairs, left;right"
        )
    exams, warnings = {}, []
    for row in rows:
        left, right = row[columns["left"]], row[columns["right"]]
        patient = os.path.splitext(left or right)[0]
        for eye, name in (("left", left), ("right", right)):
            if not name:
                continue
            if _key(name) in exams:
                warnings.append(
                    f"{path}:{row.line}: {name} is already in the examination of "
                    f"{exams[_key(name)][0]}; kept there"
                )
                continue
            exams[_key(name)] = (patient, eye)
    return exams, warnings


class Messidor2(base.Source):
    name = "messidor2"

    def check(self):
        super().check()
        base.require_file(os.path.join(self.data_dir, LABELS))

    def scan(self):
        columns = ("image_id", "adjudicated_dr_grade", "adjudicated_gradable")
        labels = os.path.join(self.data_dir, LABELS)
        rows, empty = base.unnamed(labels, base.read_csv(labels, columns), "image_id")
        pairs = os.path.join(self.data_dir, PAIRS)
        self._warnings = []
        exams = {}
        if storage.isfile(pairs):
            exams, self._warnings = read_pairs(pairs)
        else:
            self._warnings.append(
                f"{pairs} not found: the two eyes of an examination cannot be paired, so "
                "validation may hold the fellow eye of a training image (put ADCIS's "
                f"{PAIRS} in the data dir)"
            )
        yield from empty
        folder = os.path.join(self.data_dir, "IMAGES")
        files = {}
        if storage.isdir(folder):
            found, rejects = base.list_files(folder, self.data_dir)
            files, twins = base.index_files(found, os.path.basename)
            yield from rejects + twins
        entries, unpaired = [], 0
        for row in rows:
            if row["adjudicated_gradable"] == "0":
                files_path = files.pop(row["image_id"], os.path.join(folder, row["image_id"]))
                yield Reject(files_path, "ungradable (adjudicated_gradable=0), excluded")
                continue
            fields = {"split": "train"}
            exam = exams.get(_key(row["image_id"]))
            if exam is not None:
                fields.update(patient_id=exam[0], eye=exam[1])
            unpaired += exam is None
            entries.append((row["image_id"], row["adjudicated_dr_grade"], fields))
        if exams and unpaired:
            self._warnings.append(
                f"{pairs}: {unpaired} graded image(s) in no examination, each its own patient"
            )
        yield from base.join_labels(
            entries,
            files,
            self.num_classes,
            missing_path=lambda key: os.path.join(folder, key),
            unlabelled_reason=f"no row in {LABELS}",
        )
