"""Dataset layouts, one small adapter each, selected by ``--data=NAME``."""

import dataclasses

from effdr_tf.data.sources.aptos2019 import Aptos2019
from effdr_tf.data.sources.base import Source
from effdr_tf.data.sources.cifar import Cifar, Cifar100
from effdr_tf.data.sources.ddr import DDR
from effdr_tf.data.sources.generic import CsvLabels, GradeFolders
from effdr_tf.data.sources.idrid import IDRiD
from effdr_tf.data.sources.kaggle_dr import KaggleDR
from effdr_tf.data.sources.messidor2 import Messidor2
from effdr_tf.data.sources.synthetic_dr import SyntheticDR
from effdr_tf.errors import EffdrError

SOURCES = {
    cls.name: cls
    for cls in (
        SyntheticDR,
        KaggleDR,
        Aptos2019,
        Messidor2,
        IDRiD,
        DDR,
        CsvLabels,
        GradeFolders,
        Cifar,
        Cifar100,
    )
}


def make_source(name: str, data_dir: str = "", **options) -> Source:
    """The adapter for ``--data=name``; options the adapter does not take are ignored."""
    if name not in SOURCES:
        raise EffdrError(f"--data={name}: unknown dataset; choose one of {', '.join(SOURCES)}")
    cls = SOURCES[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in options.items() if k in fields and v is not None}
    if name != SyntheticDR.name:
        if not data_dir:
            raise EffdrError(f"--data={name} needs --data_dir")
        kwargs["data_dir"] = data_dir
    return cls(**kwargs)


__all__ = ["SOURCES", "Source", "make_source"]
