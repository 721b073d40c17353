"""Headless Chromium for page tests: the DOM after load, and screenshots.

`make test` installs Debian's chromium-headless-shell where it can (see Makefile); elsewhere
set CHROMIUM=/path/to/chrome. On CI (CI=true) a missing browser fails the test instead of
skipping it.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest

CANDIDATES = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")


def chromium() -> str:
    """The browser binary, or a skip (a failure on CI) naming how to get one."""
    found = os.environ.get("CHROMIUM") or next(filter(None, map(shutil.which, CANDIDATES)), None)
    if found:
        return found
    message = "no headless Chromium: apt-get install chromium-headless-shell, or set CHROMIUM"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _run(page: pathlib.Path, *flags: str, width: int, height: int) -> subprocess.CompletedProcess:
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",  # tests run as root on CI
        "--disable-gpu",
        "--hide-scrollbars",
        f"--window-size={width},{height}",
        "--virtual-time-budget=5000",  # let load handlers finish before the dump or the shot
        *flags,
        page.resolve().as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def dom_after_load(page: pathlib.Path) -> str:
    """The serialised DOM once the page and its scripts have run."""
    return _run(page, "--dump-dom", width=1280, height=1024).stdout


def screenshot(page: pathlib.Path, png: pathlib.Path, width: int = 1280, height: int = 3000):
    """A PNG of the rendered page (the top ``height`` pixels)."""
    _run(page, f"--screenshot={png}", width=width, height=height)
    return png
