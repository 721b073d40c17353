"""Kernel inception distance (effdr_tf/evaluation/realism.py) and benchmarks/realism.py."""

import json
import os
import re

import cv2
import numpy as np
import pytest
from skimage import data as skdata

from effdr_tf.data import synthetic
from effdr_tf.errors import EffdrError
from effdr_tf.evaluation import realism
from tests.conftest import run_command

SIZE = 64


@pytest.fixture(scope="session")
def weights_cache(tmp_path_factory) -> str:
    """A cache folder holding the converted Lite0 ImageNet weights, converted once."""
    from effdr_tf import demo

    folder = tmp_path_factory.mktemp("effdr_cache")
    demo.lite0_weights(str(folder))
    return str(folder)


def _photographs(n: int, seed: int, channels=(0, 1, 2)) -> list[np.ndarray]:
    """Copies of skimage's retina with a random brightness, per-channel gain and eye side;
    ``channels`` reorders the colour channels (another colour response altogether)."""
    rng = np.random.default_rng(seed)
    base = cv2.resize(skdata.retina(), (320, 320), interpolation=cv2.INTER_AREA)
    out = []
    for i in range(n):
        gain = rng.uniform(0.8, 1.1) * rng.uniform(0.93, 1.07, 3)
        image = np.clip(base.astype(np.float32) * gain, 0, 255).astype(np.uint8)
        out.append(np.ascontiguousarray(image[:, ::-1] if i % 2 else image)[..., list(channels)])
    return out


def _naive_unbiased_mmd2(x, y):
    d = x.shape[1]

    def k(a, b):
        return (a @ b / d + 1.0) ** 3

    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


def test_kid_is_the_unbiased_mmd2_of_the_cubic_kernel():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(9, 5)), rng.normal(0.3, 1.2, size=(7, 5))
    # By default subsets of half the smaller set, which differ from one another.
    estimate = realism.kid(x, y, subsets=20, rounds=10)
    assert estimate.subset_size == 3 and estimate.spread > 0
    # Subsets as large as the sets: every subset is the whole set.
    whole = realism.kid(x[:7], y, subsets=2, subset_size=7, rounds=10)
    assert whole.value == pytest.approx(_naive_unbiased_mmd2(x[:7], y), rel=1e-9)
    assert whole.spread == pytest.approx(0.0, abs=1e-9)
    # A resample that holds an image twice: its copy is not a second, identical image.
    counts = np.array([2.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    kxx, kyy = realism.polynomial_kernel(x[:7], x[:7]), realism.polynomial_kernel(y, y)
    kxy = realism.polynomial_kernel(x[:7], y)
    weighted = realism._weighted_mmd2(kxx, kyy, kxy, counts, np.ones(7))
    rows = np.repeat(np.arange(7), counts.astype(int))
    same = rows[:, None] == rows[None, :]
    within = kxx[np.ix_(rows, rows)][~same].mean()
    expected = within + kyy[~np.eye(7, dtype=bool)].mean() - 2 * kxy[rows].mean()
    assert weighted == pytest.approx(expected, rel=1e-9)


def test_kid_of_two_draws_of_one_distribution_is_near_zero_and_its_interval_holds_zero():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(120, 32)), rng.normal(size=(120, 32))
    shifted = rng.normal(0.6, 1.0, size=(120, 32))
    same, other = realism.kid(x, y, rounds=300), realism.kid(x, shifted, rounds=300)
    assert same.interval[0] < 0 < same.interval[1]
    assert abs(same.value) < 0.05 * other.value
    assert other.interval[0] > 0


def test_kid_needs_two_images_a_set():
    with pytest.raises(EffdrError, match="at least 2 images"):
        realism.kid(np.ones((1, 4)), np.ones((5, 4)))


def test_other_colour_statistics_are_further_than_similar_photographs(weights_cache):
    extract = realism.FeatureExtractor(
        SIZE, os.path.join(weights_cache, "efficientnet-lite0_imagenet.weights.h5")
    )

    def features(images):
        return extract(np.stack([realism.prepare(i, SIZE) for i in images]))

    reference = features(_photographs(12, seed=1))
    assert reference.shape == (12, 1280)
    similar = realism.kid(reference, features(_photographs(12, seed=2)), rounds=200)
    recoloured = realism.kid(
        reference, features(_photographs(12, seed=2, channels=(2, 1, 0))), rounds=200
    )
    assert recoloured.value > 5 * max(similar.value, 1e-9)
    assert recoloured.interval[0] > similar.value


def _write_folder(folder, n: int) -> str:
    """n photographs as JPEG and PNG, some in a subfolder, a text file, and one corrupt JPEG."""
    (folder / "camera_b").mkdir(parents=True)
    for i, image in enumerate(_photographs(n, seed=5)):
        where = folder / "camera_b" if i % 3 == 0 else folder
        name = f"eye{i}.{'png' if i % 2 else 'jpg'}"
        assert cv2.imwrite(str(where / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    (folder / "notes.txt").write_text("grades are elsewhere")
    corrupt = folder / "camera_b" / "broken.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a photograph")
    return str(corrupt)


def test_realism_script_compares_every_preset_with_a_folder(tmp_path, weights_cache):
    corrupt = _write_folder(tmp_path / "real", 8)
    out = tmp_path / "kid.json"
    result = run_command(
        "benchmarks/realism.py",
        f"--real={tmp_path / 'real'}",
        "--num_images=8",
        f"--image_size={SIZE}",
        "--rounds=100",
        "--subsets=10",
        f"--out={out}",
        env={"EFFDR_CACHE": weights_cache},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    skipped = [line for line in lines if line.startswith("skipped ")]
    assert len(skipped) == 1 and skipped[0].startswith(f"skipped {corrupt}: ")
    assert f"real: 8 photographs from {tmp_path / 'real'} (1 skipped)" in result.stdout
    number = r"-?\d+\.\d+"
    kid_text = rf"KID x 1000 = {number} \(95 % CI {number} to {number}; subset spread"
    assert re.search(rf"^real vs real \(4 against 4\): {kid_text}", result.stdout, re.M)
    # Whatever presets the generator has now, old and new, each gets its line.
    for preset in synthetic.PRESETS:
        assert re.search(
            rf"^{preset} \(\d+ photographs, \d+ rejected\): {kid_text}", result.stdout, re.M
        )
    first = next(iter(synthetic.PRESETS))
    assert re.fullmatch(rf"ratio={number} KID of \w+ over KID of {first}.*", lines[-1])
    figures = json.loads(out.read_text())
    assert figures["real_images"] == 8 and figures["skipped"] == 1
    assert set(synthetic.PRESETS) <= set(figures)


@pytest.mark.parametrize("layout", ["missing", "only_broken"])
def test_realism_script_without_a_readable_photograph_is_one_error_line(tmp_path, layout):
    folder = tmp_path / "real"
    if layout == "only_broken":
        folder.mkdir()
        (folder / "a.jpg").write_bytes(b"")
        (folder / "b.png").write_bytes(b"\x89PNG garbage")
    result = run_command("benchmarks/realism.py", f"--real={folder}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {folder}: ")
    expected = "folder of photographs not found" if layout == "missing" else "0 readable"
    assert expected in lines[0]
    assert result.stdout == ""
