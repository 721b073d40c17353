"""Reading EfficientNet checkpoints from local files into our Keras models, with no network.

Supported, detected from the file's bytes rather than its name:

* Keras-applications ImageNet files (``efficientnetb{0..7}.h5``, ``_notop.h5``: legacy HDF5),
  Keras 3 ``.weights.h5`` and ``.keras`` files (ours or keras.applications');
* efficientnet_pytorch state dicts (``_conv_stem``, ``_blocks.N._expand_conv``, ...), B0-B8,
  AdvProp and the EfficientNet-Lite ports;
* timm ``tf_efficientnet_*`` state dicts (``conv_stem``, ``blocks.S.I.conv_pw``, ...):
  standard, AdvProp (``ap``) and Noisy-Student (``ns``).

``.safetensors`` is read with the ``safetensors`` package (no torch); ``.pth`` with
``torch.load(weights_only=True)``. Every tensor of the model is placed or the import fails with
one line naming what could not be placed: missing, unexpected and wrong-shape tensors.

Which input normalisation a checkpoint expects cannot be read from its tensors. It is taken
from, in order: the metadata of files written by ``convert``; the Normalization layer of Keras
files; the family (EfficientNet-Lite: [-1, 1]); AdvProp markers in the file or folder name
(``adv-efficientnet-b5-*.pth``, ``tf_efficientnet_b5_ap-*.pth``, ``tf_efficientnet_b5.ap_in1k``):
[-1, 1]; otherwise ImageNet mean/std. Pass ``normalization=`` to override.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import struct
import zipfile

import numpy as np

from effdr_tf import constants, fileio
from effdr_tf.errors import EffdrError, WeightsError
from effdr_tf.models.network import VARIANTS, Architecture, architecture

METADATA_ATTR = "effdr_tf"
HEAD_LAYER = "predictions"
# keras.applications' Normalization layer; Keras numbers repeated names (normalization_1, ...).
_KERAS_NORMALIZATION = re.compile(r"^normalization(_\d+)?$")
# Where keras.applications keeps downloaded weights: $KERAS_HOME/models (default ~/.keras).
KERAS_APPLICATIONS_URL = "https://storage.googleapis.com/keras-applications/"

# Limits on what a file may declare before any tensor is read, so a crafted file (a compressed
# HDF5 dataset or zip entry of zeros declaring gigabytes) is refused instead of allocated.
# EfficientNet-L2, the largest supported, has about 480M parameters; no tensor of any variant
# comes near 2^27 values (L2's classifier for ImageNet-21k's 21,843 classes has 120M).
MAX_TENSOR_VALUES = 1 << 27
# Weights hardly compress (float32 noise), so a file declaring far more bytes than it holds is
# not a checkpoint; the slack covers small zero-initialised tensors and format overhead.
MAX_EXPANSION = 4
EXPANSION_SLACK = 64 << 20

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGIC = b"PK\x03\x04"
_ADVPROP = re.compile(r"advprop|(^|[^a-z])adv[-_]|[._]ap([._-]|$)")


@dataclasses.dataclass
class Checkpoint:
    """A checkpoint read into memory.

    Attributes:
        path: where it came from.
        layout: ``keras`` (weights per layer name), ``efficientnet_pytorch`` or ``timm``.
        tensors: for ``keras``, layer name -> list of arrays in Keras variable order; for the
            PyTorch layouts, state-dict key -> array.
        metadata: what ``convert`` recorded, if the file came from it.
    """

    path: str
    layout: str
    tensors: dict
    metadata: dict = dataclasses.field(default_factory=dict)

    @property
    def family(self) -> str:
        if self.metadata:
            return "effdr_tf"
        return {"keras": "keras-applications"}.get(self.layout, self.layout)

    def has_squeeze_excitation(self) -> bool:
        return any(("se_reduce" in k) or ("se.conv_reduce" in k) for k in self.tensors)

    def num_classes(self) -> int | None:
        """Classes of the checkpoint's classifier; None for a headless checkpoint."""
        if self.layout == "keras":
            head = self.tensors.get(HEAD_LAYER)
            return int(head[0].shape[-1]) if head else None
        key = {"efficientnet_pytorch": "_fc.weight", "timm": "classifier.weight"}[self.layout]
        return int(self.tensors[key].shape[0]) if key in self.tensors else None

    def signature(self) -> tuple[int, int, int, bool] | None:
        """(stem filters, number of blocks, head filters, has SE), to tell variants apart."""
        t = self.tensors
        try:
            if self.layout == "keras":
                stem = t["stem_conv"][0].shape[-1]
                head = t["top_conv"][0].shape[-1]
                blocks = sum(1 for k in t if k.endswith("_project_conv"))
            elif self.layout == "efficientnet_pytorch":
                stem = t["_conv_stem.weight"].shape[0]
                head = t["_conv_head.weight"].shape[0]
                blocks = len({k.split(".")[1] for k in t if k.startswith("_blocks.")})
            else:
                stem = t["conv_stem.weight"].shape[0]
                head = t["conv_head.weight"].shape[0]
                blocks = len({tuple(k.split(".")[1:3]) for k in t if k.startswith("blocks.")})
        except (KeyError, IndexError, AttributeError):
            return None
        return int(stem), int(blocks), int(head), self.has_squeeze_excitation()

    def guess_variant(self) -> str | None:
        """The variant whose shape this checkpoint has, if any."""
        if self.metadata.get("variant"):
            return self.metadata["variant"]
        sig = self.signature()
        for name in VARIANTS:
            arch = architecture(name)
            has_se = any(b.se_filters for b in arch.blocks)
            if sig == (arch.stem_filters, len(arch.blocks), arch.head_filters, has_se):
                return name
        return None

    def normalization(self):
        """The input normalisation this checkpoint expects (a preset name or mean/std dict)."""
        if self.metadata.get("normalization") is not None:
            return self.metadata["normalization"]
        if self.layout == "keras":
            found = [v for k, v in self.tensors.items() if _KERAS_NORMALIZATION.match(k)]
            return _keras_file_normalization(found[0] if found else None)
        if not self.has_squeeze_excitation():  # EfficientNet-Lite
            return "inception"
        where = "/".join(self.path.replace("\\", "/").lower().split("/")[-2:])
        return "inception" if _ADVPROP.search(where) else "imagenet"


def _keras_file_normalization(weights):
    """Reads the Normalization layer of a keras.applications file.

    keras.applications ImageNet files store the ImageNet std where the variance belongs and
    correct it with a Rescaling layer added only for ``weights="imagenet"``; a file loaded by
    path without that layer is normalised wrongly. Both spellings mean ImageNet mean/std here.
    """
    if not weights:
        return "imagenet"
    mean = np.asarray(weights[0], np.float64).reshape(-1)
    var = np.asarray(weights[1], np.float64).reshape(-1)
    im_mean, im_std = (np.asarray(v) for v in constants.NORMALIZATION_PRESETS["imagenet"])
    if np.allclose(mean, im_mean, atol=1e-3) and (
        np.allclose(var, im_std, atol=1e-3) or np.allclose(var, im_std**2, atol=1e-4)
    ):
        return "imagenet"
    if np.allclose(mean, 0.0) and np.allclose(var, 1.0):
        return "unit"
    return {"mean": mean.tolist(), "std": np.sqrt(np.maximum(var, 1e-12)).tolist()}


# --------------------------------------------------------------------------------------------
# Reading files


def read_checkpoint(path: str) -> Checkpoint:
    """Reads a checkpoint of any supported format; the format is detected from its bytes."""
    path = os.fspath(path)
    data = fileio.read_bytes(path)
    if not data:
        raise WeightsError(f"{path}: empty file, not a checkpoint")
    try:
        if data.startswith(_HDF5_MAGIC):
            return _read_hdf5(path, io.BytesIO(data), len(data))
        if data.startswith(_ZIP_MAGIC):
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                # Entries are files, not tensors: only what they expand to is checked here.
                _check_declared(
                    path, ((i.filename, 0, i.file_size) for i in z.infolist()), len(data)
                )
                if "model.weights.h5" in z.namelist():  # a Keras 3 .keras archive
                    inner = z.read("model.weights.h5")
                    return _read_hdf5(path, io.BytesIO(inner), len(inner))
            return _flat(path, _read_torch(path, data))
        if _looks_like_safetensors(data):
            from safetensors.numpy import load

            _check_declared(path, _safetensors_declared(data), len(data))
            return _flat(path, load(data))
        if data[:2] == b"\x80\x02":  # legacy (pre-zip) torch.save pickle
            return _flat(path, _read_torch(path, data))
    except EffdrError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated or corrupt files of every format
        raise WeightsError(f"{path}: corrupt or truncated checkpoint: {_first_line(e)}") from e
    raise WeightsError(
        f"{path}: not a checkpoint (expected Keras .h5/.weights.h5/.keras, .safetensors or "
        ".pth contents)"
    )


def _check_declared(path: str, entries, file_size: int) -> None:
    """Refuses a file whose tensors (name, values, bytes) are larger than any EfficientNet's
    or than its own bytes can hold, before anything is read or allocated."""
    total = 0
    for name, values, nbytes in entries:
        if values > MAX_TENSOR_VALUES:
            raise WeightsError(
                f"{path}: {name} declares {values:,} values, more than any EfficientNet tensor "
                f"(at most {MAX_TENSOR_VALUES:,}): not an EfficientNet checkpoint"
            )
        total += nbytes
    if total > MAX_EXPANSION * file_size + EXPANSION_SLACK:
        raise WeightsError(
            f"{path}: declares {total / 2**20:,.0f} MiB of data in a {file_size / 2**20:,.1f} MiB "
            "file, far more than weights compress to: corrupt or crafted, not read"
        )


def _safetensors_declared(data: bytes):
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    for name, info in header.items():
        if name != "__metadata__":
            begin, end = info["data_offsets"]
            yield name, int(np.prod(info["shape"], dtype=np.float64)), int(end) - int(begin)


def _hdf5_declared(group):
    """(name, values, bytes) of every dataset in an open HDF5 file, from its metadata only."""
    import h5py

    found = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            values = int(np.prod(obj.shape, dtype=np.float64)) if obj.shape else 1
            found.append((name, values, values * obj.dtype.itemsize))

    group.visititems(visit)
    return found


def _looks_like_safetensors(data: bytes) -> bool:
    if len(data) < 9:
        return False
    (header_len,) = struct.unpack("<Q", data[:8])
    return data[8:9] == b"{" and header_len < len(data) + (1 << 32)


def _read_torch(path: str, data: bytes) -> dict:
    try:
        import torch
    except ImportError as e:
        raise WeightsError(
            f"{path}: reading a PyTorch .pth checkpoint needs torch (pip install "
            "'effdr_tf[torch]'), or convert it to .safetensors"
        ) from e
    obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    # Training checkpoints wrap the state dict.
    for key in ("state_dict", "model", "state_dict_ema", "model_ema"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: a .pth file without a state dict ({type(obj).__name__})")
    out = {}
    for k, v in obj.items():
        if hasattr(v, "detach"):
            # "module." comes from DataParallel / DistributedDataParallel wrappers.
            out[k.removeprefix("module.")] = v.detach().cpu().float().numpy()
    return out


def _flat(path: str, tensors: dict) -> Checkpoint:
    if "_conv_stem.weight" in tensors:
        return Checkpoint(path, "efficientnet_pytorch", dict(tensors))
    if "conv_stem.weight" in tensors:
        return Checkpoint(path, "timm", dict(tensors))
    sample = ", ".join(list(tensors)[:3]) or "no tensors"
    raise WeightsError(
        f"{path}: not an EfficientNet state dict (no _conv_stem.weight or conv_stem.weight; "
        f"has {sample})"
    )


def _read_hdf5(path: str, fileobj, file_size: int) -> Checkpoint:
    import h5py

    with h5py.File(fileobj, "r") as f:
        _check_declared(path, _hdf5_declared(f), file_size)
        metadata = json.loads(f.attrs[METADATA_ATTR]) if METADATA_ATTR in f.attrs else {}
        if "layer_names" in f.attrs:  # legacy Keras 2 format: keras.applications files
            tensors = {}
            for raw in f.attrs["layer_names"]:
                name = raw.decode() if isinstance(raw, bytes) else str(raw)
                group = f[name]
                names = [
                    n.decode() if isinstance(n, bytes) else str(n)
                    for n in group.attrs.get("weight_names", [])
                ]
                if names:
                    tensors[name] = [np.asarray(group[n]) for n in names]
        elif "layers" in f:  # Keras 3 .weights.h5
            tensors = {}
            for key, group in f["layers"].items():
                if "vars" not in group:
                    continue
                variables = group["vars"]
                name = str(variables.attrs.get("name", key))
                if len(variables):
                    tensors[name] = [np.asarray(variables[str(i)]) for i in range(len(variables))]
        else:
            raise WeightsError(f"{path}: an HDF5 file that holds no Keras weights")
    return Checkpoint(path, "keras", tensors, metadata)


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


# --------------------------------------------------------------------------------------------
# Mapping checkpoint tensors onto our layers

_CONV, _CONV_BIAS, _DWCONV, _BN, _DENSE = "conv", "conv_bias", "dwconv", "bn", "dense"
_PARTS = {
    _CONV: ("weight",),
    _CONV_BIAS: ("weight", "bias"),
    _DWCONV: ("weight",),
    _BN: ("weight", "bias", "running_mean", "running_var"),
    _DENSE: ("weight", "bias"),
}


def torch_key_table(arch: Architecture, layout: str) -> list[tuple[str, str, str]]:
    """(our layer name, checkpoint key prefix, kind) for every weighted layer of ``arch``."""
    if layout == "efficientnet_pytorch":
        rows = [("stem_conv", "_conv_stem", _CONV), ("stem_bn", "_bn0", _BN)]
        for g, block in enumerate(arch.blocks):
            p, k = block.name, f"_blocks.{g}."
            if block.expand != 1:
                rows += [
                    (f"{p}expand_conv", f"{k}_expand_conv", _CONV),
                    (f"{p}expand_bn", f"{k}_bn0", _BN),
                ]
            rows += [(f"{p}dwconv", f"{k}_depthwise_conv", _DWCONV), (f"{p}bn", f"{k}_bn1", _BN)]
            if block.se_filters:
                rows += [
                    (f"{p}se_reduce", f"{k}_se_reduce", _CONV_BIAS),
                    (f"{p}se_expand", f"{k}_se_expand", _CONV_BIAS),
                ]
            rows += [
                (f"{p}project_conv", f"{k}_project_conv", _CONV),
                (f"{p}project_bn", f"{k}_bn2", _BN),
            ]
        rows += [
            ("top_conv", "_conv_head", _CONV),
            ("top_bn", "_bn1", _BN),
            (HEAD_LAYER, "_fc", _DENSE),
        ]
        return rows
    if layout == "timm":
        rows = [("stem_conv", "conv_stem", _CONV), ("stem_bn", "bn1", _BN)]
        for block in arch.blocks:
            p, k = block.name, f"blocks.{block.stage}.{block.index}."
            if block.expand != 1:  # inverted residual: conv_pw expands, conv_pwl projects
                rows += [
                    (f"{p}expand_conv", f"{k}conv_pw", _CONV),
                    (f"{p}expand_bn", f"{k}bn1", _BN),
                    (f"{p}dwconv", f"{k}conv_dw", _DWCONV),
                    (f"{p}bn", f"{k}bn2", _BN),
                ]
                project, project_bn = f"{k}conv_pwl", f"{k}bn3"
            else:  # depthwise-separable: conv_pw projects
                rows += [(f"{p}dwconv", f"{k}conv_dw", _DWCONV), (f"{p}bn", f"{k}bn1", _BN)]
                project, project_bn = f"{k}conv_pw", f"{k}bn2"
            if block.se_filters:
                rows += [
                    (f"{p}se_reduce", f"{k}se.conv_reduce", _CONV_BIAS),
                    (f"{p}se_expand", f"{k}se.conv_expand", _CONV_BIAS),
                ]
            rows += [(f"{p}project_conv", project, _CONV), (f"{p}project_bn", project_bn, _BN)]
        rows += [
            ("top_conv", "conv_head", _CONV),
            ("top_bn", "bn2", _BN),
            (HEAD_LAYER, "classifier", _DENSE),
        ]
        return rows
    raise ValueError(f"no key table for layout {layout!r}")


def _to_keras(kind: str, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """PyTorch tensor layouts to Keras variable layouts."""
    if kind in (_CONV, _CONV_BIAS):
        # Only transpose well-formed kernels; a wrong rank is reported as a shape mismatch.
        w = arrays[0].transpose(2, 3, 1, 0) if arrays[0].ndim == 4 else arrays[0]
        return [w, *arrays[1:]]
    if kind == _DWCONV:  # (C, 1, kh, kw) -> (kh, kw, C, 1)
        return [arrays[0].transpose(2, 3, 0, 1) if arrays[0].ndim == 4 else arrays[0]]
    if kind == _DENSE:
        return [arrays[0].T, arrays[1]]
    return list(arrays)


@dataclasses.dataclass
class Mapping:
    """Checkpoint tensors arranged per Keras layer, with what did not fit."""

    weights: dict  # layer name -> list of arrays in Keras order
    sources: dict  # layer name -> checkpoint names, for messages
    missing: list
    unexpected: list


def map_checkpoint(ckpt: Checkpoint, arch: Architecture) -> Mapping:
    """Arranges a checkpoint's tensors by our layer names (shapes are checked on assignment)."""
    if ckpt.layout == "keras":
        weights = {k: list(v) for k, v in ckpt.tensors.items() if not _KERAS_NORMALIZATION.match(k)}
        return Mapping(weights, {k: k for k in weights}, [], [])
    weights, sources, missing = {}, {}, []
    used = set()
    for layer, prefix, kind in torch_key_table(arch, ckpt.layout):
        keys = [f"{prefix}.{part}" for part in _PARTS[kind]]
        absent = [k for k in keys if k not in ckpt.tensors]
        sources[layer] = f"{prefix}.weight"
        if absent:
            # A checkpoint without a classifier is headless, not broken.
            if layer != HEAD_LAYER or len(absent) != len(keys):
                missing += absent
            continue
        used.update(keys)
        weights[layer] = _to_keras(kind, [ckpt.tensors[k] for k in keys])
    unexpected = [
        k for k in ckpt.tensors if k not in used and not k.endswith("num_batches_tracked")
    ]
    return Mapping(weights, sources, missing, unexpected)


def _short(items: list[str], limit: int = 3) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def load_into(model, ckpt: Checkpoint, arch: Architecture, *, reinit_head: bool = False) -> dict:
    """Sets every weighted layer of ``model`` from ``ckpt``, or raises ``WeightsError``.

    Args:
        model: a model from ``build_efficientnet`` for ``arch``.
        ckpt: the checkpoint.
        arch: the model's architecture.
        reinit_head: keep the model's freshly initialised classifier when the checkpoint has
            none or one for another number of classes.

    Returns:
        A summary: layers loaded, whether the head was kept or re-initialised.
    """
    mapping = map_checkpoint(ckpt, arch)
    layers = {layer.name: layer for layer in model.layers if layer.weights}
    values = dict(mapping.weights)
    ckpt_head = values.pop(HEAD_LAYER, None)
    missing, unexpected, wrong = list(mapping.missing), list(mapping.unexpected), []
    for name, layer in layers.items():
        if name == HEAD_LAYER:
            continue
        if name not in values:
            if ckpt.layout == "keras":  # the PyTorch layouts list their missing keys already
                missing.append(name)
            continue
        expected = [tuple(w.shape) for w in layer.weights]
        got = [tuple(a.shape) for a in values[name]]
        if got != expected:
            source = mapping.sources.get(name, name)
            wrong.append(f"{source} {got[0] if got else ()} vs {expected[0]}")
    unexpected += [k for k in values if k not in layers]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} with wrong shape: {_short(wrong)}")
        if missing:
            parts.append(f"{len(missing)} missing: {_short(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {_short(unexpected)}")
        guess = ckpt.guess_variant()
        looks = f", it looks like efficientnet-{guess}" if guess and guess != arch.variant else ""
        raise WeightsError(
            f"{ckpt.path}: does not fit efficientnet-{arch.variant}{looks}: " + "; ".join(parts)
        )

    head_status = "none"
    if HEAD_LAYER in layers:
        model_shapes = [tuple(w.shape) for w in layers[HEAD_LAYER].weights]
        if ckpt_head is not None and [a.shape for a in ckpt_head] == model_shapes:
            values[HEAD_LAYER] = ckpt_head
            head_status = "loaded"
        elif reinit_head:
            head_status = "reinitialised"
        elif ckpt_head is None:
            raise WeightsError(
                f"{ckpt.path}: checkpoint has no classifier; build with include_top=False or "
                "re-initialise the head (reinit_head=True)"
            )
        else:
            raise WeightsError(
                f"{ckpt.path}: classifier of the checkpoint has {ckpt.num_classes()} classes, "
                f"the model {model_shapes[1][0]}: pass num_classes={ckpt.num_classes()} or "
                "reinit_head=True"
            )
    for name, arrays in values.items():
        layers[name].set_weights([np.asarray(a, dtype=np.float32) for a in arrays])
    return {"layers": len(values), "head": head_status}


# --------------------------------------------------------------------------------------------
# The Keras cache folder


def keras_cache_dirs() -> list[str]:
    """Folders keras.applications downloads to, in the order Keras tries them."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return [os.path.join(home, "models"), os.path.join("/tmp", ".keras", "models")]


def keras_imagenet_file(variant: str, include_top: bool) -> str:
    """Finds ``efficientnetb{N}[_notop].h5`` in the Keras cache, or explains where to put it."""
    name = f"efficientnet{variant}"
    if variant not in {f"b{i}" for i in range(8)}:
        raise WeightsError(
            f'weights="imagenet": keras.applications has ImageNet files for b0-b7 only, not '
            f"{variant}; pass the path of a timm or efficientnet_pytorch checkpoint"
        )
    # A file with the top also serves a model without it.
    names = [f"{name}.h5"] if include_top else [f"{name}_notop.h5", f"{name}.h5"]
    for folder in keras_cache_dirs():
        for n in names:
            candidate = os.path.join(folder, n)
            if os.path.exists(candidate):
                return candidate
    raise WeightsError(
        f'weights="imagenet": {names[0]} is not in {keras_cache_dirs()[0]}; download '
        f"{KERAS_APPLICATIONS_URL}{names[0]} there on a connected machine, or pass a path"
    )
