"""The public model API: ``efficientnet(...)`` and ``convert(...)``."""

from __future__ import annotations

import json
import logging
import os
import tempfile

from effdr_tf import fileio
from effdr_tf.errors import WeightsError
from effdr_tf.models import weights as weights_lib
from effdr_tf.models.network import architecture, build_efficientnet, canonical_variant

log = logging.getLogger(__name__)

# Normalisation of a model trained from scratch.
DEFAULT_NORMALIZATION = "imagenet"


def _resolve_weights(weights, variant: str, include_top: bool) -> weights_lib.Checkpoint | None:
    if weights is None:
        return None
    if weights == "imagenet":
        weights = weights_lib.keras_imagenet_file(variant, include_top)
    return weights_lib.read_checkpoint(weights)


def efficientnet(
    variant: str = "b0",
    num_classes: int = 5,
    input_shape=None,
    include_top: bool = True,
    pooling: str | None = None,
    weights=None,
    normalization="auto",
    *,
    reinit_head: bool = False,
    **kwargs,
):
    """An EfficientNet, optionally with pretrained weights from a local file.

    Args:
        variant: ``b0``..``b8``, ``l2``, ``lite0``..``lite4``.
        num_classes: classifier outputs; 1000 keeps an ImageNet head.
        input_shape: ``(height, width, 3)``; ``None`` takes the variant's resolution.
        include_top: add the pooling, dropout and dense classifier.
        pooling: without the top: ``None``, ``"avg"`` or ``"max"``.
        weights: ``None`` (random), ``"imagenet"`` (the keras.applications file in the Keras
            cache folder, b0-b7), or a path/URL of any checkpoint ``weights.read_checkpoint``
            reads. The format is detected from the file.
        normalization: ``"auto"`` (what the weights expect; ImageNet mean/std without weights),
            a preset name from ``constants.NORMALIZATION_PRESETS``, ``"none"`` for inputs that
            are already normalised, or ``{"mean": [...], "std": [...]}`` on [0, 1] pixels.
        reinit_head: keep a freshly initialised classifier when the checkpoint's does not fit
            (another number of classes) or is absent.
        **kwargs: passed to ``build_efficientnet`` (dropout_rate, drop_connect_rate,
            bn_momentum, bn_epsilon, classifier_activation, name).

    Returns:
        A ``keras.Model`` taking pixels in [0, 255] (unless ``normalization="none"``) and
        returning logits (unless ``classifier_activation`` says otherwise).
    """
    variant = canonical_variant(variant)
    ckpt = _resolve_weights(weights, variant, include_top)
    if normalization == "auto":
        normalization = ckpt.normalization() if ckpt is not None else DEFAULT_NORMALIZATION
    model = build_efficientnet(
        variant,
        num_classes=num_classes,
        input_shape=input_shape,
        include_top=include_top,
        pooling=pooling,
        normalization=normalization,
        **kwargs,
    )
    if ckpt is not None:
        summary = weights_lib.load_into(model, ckpt, architecture(variant), reinit_head=reinit_head)
        log.info(
            "loaded %s (%s) into efficientnet-%s: %d layers, head %s, normalization %s",
            ckpt.path,
            ckpt.family,
            variant,
            summary["layers"],
            summary["head"],
            normalization,
        )
    return model


def convert(
    src: str,
    dst: str,
    variant: str | None = None,
    *,
    normalization="auto",
    include_top: bool = True,
) -> dict:
    """Converts any supported checkpoint into a Keras ``.weights.h5`` file that loads fast.

    The file records the variant, the number of classes and the input normalisation, so
    ``efficientnet(variant, weights=dst)`` needs no further hints.

    Args:
        src: path or URL of the checkpoint.
        dst: path or URL to write; must end in ``.weights.h5``. Written under a temporary name
            and renamed when complete.
        variant: the checkpoint's variant; ``None`` detects it from the tensor shapes.
        normalization: ``"auto"`` keeps what the checkpoint expects; or a preset to record.
        include_top: keep the classifier (if the checkpoint has one).

    Returns:
        What was written: variant, num_classes, normalization, family, dst.
    """
    if not str(dst).endswith(".weights.h5"):
        raise WeightsError(f"{dst}: the output name must end in .weights.h5")
    ckpt = weights_lib.read_checkpoint(src)
    if variant is None:
        variant = ckpt.guess_variant()
        if variant is None:
            raise WeightsError(f"{src}: cannot tell the variant from its shapes; pass --variant")
    variant = canonical_variant(variant)
    num_classes = ckpt.num_classes()
    include_top = include_top and num_classes is not None
    if normalization == "auto":
        normalization = ckpt.normalization()
    model = build_efficientnet(
        variant,
        num_classes=num_classes or 1,
        input_shape=(None, None, 3),
        include_top=include_top,
        normalization=normalization,
    )
    weights_lib.load_into(model, ckpt, architecture(variant))
    info = {
        "variant": variant,
        "num_classes": num_classes if include_top else None,
        "normalization": normalization,
        "family": ckpt.family,
        "source": os.path.basename(str(src)),
    }
    local_dir = None if not fileio.is_remote(dst) else tempfile.mkdtemp()
    final_local = dst if local_dir is None else os.path.join(local_dir, "out.weights.h5")
    tmp = f"{final_local[: -len('.weights.h5')]}.tmp{os.getpid()}.weights.h5"
    try:
        model.save_weights(tmp)
        import h5py

        with h5py.File(tmp, "a") as f:
            f.attrs[weights_lib.METADATA_ATTR] = json.dumps(info)
        fileio.publish(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return {**info, "dst": str(dst)}


def float32_copy(model):
    """The same model computing in float32 throughout, with the same weights.

    A model trained under ``mixed_float16`` or ``mixed_bfloat16`` keeps that policy in every
    layer's config, so a saved copy would run low-precision convolutions on a CPU and would not
    convert to TFLite. Batch norm is also made per-device here (synchronised statistics mean
    nothing outside training). Returns ``model`` itself when there is nothing to change.
    """
    import keras

    def needs_change(layer):
        config = layer.get_config()
        policy = getattr(layer, "dtype_policy", None)
        low = policy is not None and policy.compute_dtype != "float32"
        return low or bool(config.get("synchronized"))

    if not any(needs_change(layer) for layer in model.layers):
        return model

    def rebuild(layer):
        config = layer.get_config()
        if "dtype" in config:
            config["dtype"] = "float32"
        if config.get("synchronized"):
            config["synchronized"] = False
        return layer.__class__.from_config(config)

    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")  # sublayers created in a layer's __init__
    try:
        copy = keras.models.clone_model(model, clone_function=rebuild)
    finally:
        keras.config.set_dtype_policy(before)
    copy.set_weights(model.get_weights())
    return copy
