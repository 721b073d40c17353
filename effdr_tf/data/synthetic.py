"""Semi-synthetic fundus photographs with DR lesions drawn by ICDR grade.

THIS DATA IS SYNTHETIC. Every image is the same real photograph (``skimage.data.retina()``, a
CC0 fundus image) under random acquisition changes, with lesions painted on by grade. It lets
the whole path (build, train, evaluate, explain) run honestly on a machine with no access to
real DR data; numbers measured on it say nothing about clinical performance.

Per image, independently of the grade: left/right flip (left eyes are mirrored), rotation,
zoom, shift, illumination gradient, colour cast, exposure (gain and gamma), defocus blur and
sensor noise. Lesions by grade, on top of the lower grades' findings:

* 1 mild: a few microaneurysms;
* 2 moderate: more microaneurysms, dot/blot haemorrhages, hard exudates, cotton-wool spots;
* 3 severe: many haemorrhages in all four quadrants, venous beading;
* 4 proliferative: neovascularisation and a pre-retinal (boat-shaped) haemorrhage.

Randomness comes from two streams per image (acquisition, lesions), both derived from the seed
and the image index, so an image can be redrawn without its lesions for tests.

Presets (``PRESETS``): ``standard`` draws every grade's findings plainly (a small model
separates the grades almost perfectly), ``hard`` draws fewer, smaller and fainter lesions and
gives some images a neighbouring grade's label, as real graders disagree (most between grades
1 and 2), so that methods that read grades better can be told apart. ``varied`` replaces the
one base photograph with procedural eyes photographed at several camera sites and labels read
by simulated graders (``effdr_tf.data.synthetic_sites``); it reuses ``draw_lesions``.
"""

from __future__ import annotations

import dataclasses
import functools

import cv2
import numpy as np

# Grade shares of the Kaggle 2015 training set (trainLabels.csv): 25810/2443/5292/873/708.
EYEPACS_SHARES = (0.735, 0.070, 0.151, 0.025, 0.020)
# Probability that a patient's second eye has the first eye's grade; otherwise it is drawn
# afresh from the shares, which keeps the marginal shares intact.
SAME_GRADE_BOTH_EYES = 0.7

# Lesion colours, RGB in [0, 1].
_HAEMORRHAGE = (0.42, 0.05, 0.04)
_MICROANEURYSM = (0.42, 0.03, 0.04)
_EXUDATE = (0.98, 0.90, 0.42)
_COTTON_WOOL = (0.93, 0.91, 0.80)
_VEIN = (0.30, 0.03, 0.06)
_NEW_VESSEL = (0.58, 0.07, 0.07)


@functools.lru_cache(maxsize=4)
def base_photograph(size: int) -> np.ndarray:
    """skimage's retina photograph at ``size`` x ``size``, RGB float32 in [0, 1]."""
    from skimage import data

    retina = data.retina()
    return cv2.resize(retina, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255


def assign_grades(num_images: int, seed: int, shares=EYEPACS_SHARES) -> list[tuple[int, str, int]]:
    """(patient, eye, grade) for ``num_images`` eyes, two per patient, correlated grades."""
    rng = np.random.default_rng([seed, 7])
    shares = np.asarray(shares, np.float64) / np.sum(shares)
    out = []
    for i in range(num_images):
        patient, eye = divmod(i, 2)
        if eye == 0 or rng.random() >= SAME_GRADE_BOTH_EYES:
            grade = int(rng.choice(len(shares), p=shares))
        else:
            grade = out[-1][2]
        out.append((patient, "right" if eye == 0 else "left", grade))
    return out


@dataclasses.dataclass(frozen=True)
class Preset:
    """How plainly the findings are drawn, and how often the label disagrees with them.

    Attributes:
        count: multiplier on the number of each kind of lesion (at least one is kept).
        size: multiplier on lesion radii and line widths.
        opacity: multiplier on lesion opacity (fainter lesions on the same photograph).
        boundary_noise: for each boundary between grades b and b + 1, the probability that an
            image on either side of it is labelled with the grade across it (half of it from
            each side); the image keeps the findings of the grade it was drawn with.
    """

    count: float = 1.0
    size: float = 1.0
    opacity: float = 1.0
    boundary_noise: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0)


PRESETS = {
    "standard": Preset(),
    # Graders disagree most between mild and moderate DR: 20 % across that boundary here, 6-10 %
    # across the others.
    "hard": Preset(count=0.5, size=0.7, opacity=0.55, boundary_noise=(0.06, 0.20, 0.10, 0.10)),
    # Procedural eyes photographed at several camera sites, labels read by simulated graders
    # (``synthetic_sites``); its lesion counts follow each image's latent severity.
    "varied": Preset(),
}


def preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"synthetic preset {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def noisy_labels(grades, seed: int, boundary_noise) -> list[int]:
    """Each grade moved across a neighbouring boundary b|b+1 with probability
    ``boundary_noise[b] / 2`` from each side (one draw per image, its own random stream)."""
    rng = np.random.default_rng([seed, 13])
    out = []
    for grade in grades:
        u = rng.random()
        up = boundary_noise[grade] / 2 if grade < len(boundary_noise) else 0.0
        down = boundary_noise[grade - 1] / 2 if grade > 0 else 0.0
        out.append(grade + 1 if u < up else grade - 1 if u > 1 - down else grade)
    return out


class _Canvas:
    """Lesion paint: a colour layer and two opacity layers (sharp edges and soft ones)."""

    def __init__(self, size: int):
        self.size = size
        self.colour = np.zeros((size, size, 3), np.float32)
        self.sharp = np.zeros((size, size), np.float32)
        self.soft = np.zeros((size, size), np.float32)

    def ellipse(self, centre, axes, angle, colour, opacity, soft=False, arc=(0, 360)):
        c = tuple(int(round(v)) for v in centre)
        a = tuple(max(1, int(round(v))) for v in axes)
        cv2.ellipse(self.colour, c, a, angle, arc[0], arc[1], colour, -1, cv2.LINE_AA)
        cv2.ellipse(
            self.soft if soft else self.sharp, c, a, angle, arc[0], arc[1], opacity, -1, cv2.LINE_AA
        )

    def polyline(self, points, colour, opacity, thickness):
        pts = np.round(points).astype(np.int32).reshape(-1, 1, 2)
        t = max(1, int(round(thickness)))
        cv2.polylines(self.colour, [pts], False, colour, t, cv2.LINE_AA)
        cv2.polylines(self.sharp, [pts], False, opacity, t, cv2.LINE_AA)

    def alpha(self) -> np.ndarray:
        soft = cv2.GaussianBlur(self.soft, (0, 0), self.size / 180)
        sharp = cv2.GaussianBlur(self.sharp, (0, 0), 0.6)
        return np.clip(np.maximum(sharp, soft), 0.0, 1.0)


def _random_points(rng, n, size, quadrant=None, max_r=0.40):
    """``n`` points inside the fundus disc, optionally in one quadrant (0..3)."""
    centre = size / 2
    radius = np.sqrt(rng.uniform(0.02, 1.0, n)) * max_r * size
    if quadrant is None:
        angle = rng.uniform(0, 2 * np.pi, n)
    else:
        angle = rng.uniform(quadrant * np.pi / 2 + 0.1, (quadrant + 1) * np.pi / 2 - 0.1, n)
    return np.stack([centre + radius * np.cos(angle), centre + radius * np.sin(angle)], axis=1)


def draw_lesions(
    grade: int, size: int, rng: np.random.Generator, style: Preset = PRESETS["standard"]
) -> _Canvas:
    """Paints the findings of ``grade`` at working resolution ``size``, as plainly as
    ``style`` says."""
    canvas = _Canvas(size)
    u = size / 512 * style.size  # lesion sizes are given for a 512-px working image

    def count(lo, hi):  # the standard preset draws exactly as before presets existed
        n = int(rng.integers(lo, hi))
        return n if style.count == 1.0 else max(1, int(round(n * style.count)))

    def alpha(opacity):
        return opacity * style.opacity

    def dots(n, colour, r_lo, r_hi, opacity, soft=False, quadrant=None):
        for x, y in _random_points(rng, n, size, quadrant):
            r = rng.uniform(r_lo, r_hi) * u
            canvas.ellipse(
                (x, y),
                (r, r * rng.uniform(0.6, 1.0)),
                rng.uniform(0, 180),
                colour,
                alpha(opacity),
                soft,
            )

    if grade >= 1:
        dots(count(3, 7), _MICROANEURYSM, 2.5, 3.5, 0.95)
    if grade >= 2:
        dots(count(4, 9), _MICROANEURYSM, 2.5, 3.5, 0.95)
        dots(count(3, 7), _HAEMORRHAGE, 3.5, 7.0, 0.85)
        for x, y in _random_points(rng, count(1, 4), size):  # exudate clusters
            for _ in range(count(3, 8)):
                dx, dy = rng.normal(0, 9 * u, 2)
                r = rng.uniform(1.5, 3.5) * u
                canvas.ellipse((x + dx, y + dy), (r, r), 0, _EXUDATE, alpha(0.95))
        dots(count(1, 3), _COTTON_WOOL, 7.0, 12.0, 0.85, soft=True)
    if grade >= 3:
        for quadrant in range(4):
            dots(count(5, 9), _HAEMORRHAGE, 4.0, 9.0, 0.85, quadrant=quadrant)
        for _ in range(count(2, 4)):  # venous beading along curved veins
            p0, p1, p2 = _random_points(rng, 3, size, max_r=0.42)
            t = np.linspace(0, 1, 40)[:, None]
            curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
            canvas.polyline(curve, _VEIN, alpha(0.75), 2.5 * u)
            for k, (x, y) in enumerate(curve[::3]):
                r = (3.5 if k % 2 else 2.2) * u
                canvas.ellipse((x, y), (r, r), 0, _VEIN, alpha(0.8))
    if grade >= 4:
        for x, y in _random_points(rng, count(2, 4), size, max_r=0.3):
            for _ in range(count(4, 8)):  # tortuous new-vessel tufts
                steps = rng.normal(0, 4 * u, (14, 2)).cumsum(axis=0)
                canvas.polyline(np.array([x, y]) + steps, _NEW_VESSEL, alpha(0.9), 1.2 * u)
        ((x, y),) = _random_points(rng, 1, size, max_r=0.3)
        r = rng.uniform(22, 38) * u  # pre-retinal haemorrhage: flat top, rounded bottom
        canvas.ellipse((x, y), (r, r * 0.75), 0, _HAEMORRHAGE, alpha(0.95), arc=(0, 180))
    return canvas


def _acquisition(image, mask, size, rng, eye):
    """Grade-independent changes: geometry, then illumination, colour, exposure, focus, noise."""
    if eye == "left":
        image, mask = image[:, ::-1], mask[:, ::-1]
    angle = rng.uniform(-20, 20)
    zoom = rng.uniform(0.9, 1.1)
    shift = rng.uniform(-0.03, 0.03, 2) * size
    matrix = cv2.getRotationMatrix2D((size / 2, size / 2), angle, zoom)
    matrix[:, 2] += shift
    warp = functools.partial(
        cv2.warpAffine,
        M=matrix,
        dsize=(size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
    )
    image = warp(np.ascontiguousarray(image))
    mask = warp(np.ascontiguousarray(mask))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    theta = rng.uniform(0, 2 * np.pi)
    gradient = 1.0 + rng.uniform(0, 0.6) * (xx * np.cos(theta) + yy * np.sin(theta))
    cast = rng.uniform(0.85, 1.15, 3)
    gain = rng.uniform(0.75, 1.3)
    gamma = rng.uniform(0.75, 1.35)
    # (gradient * cast * gain * x) ** gamma, with the per-channel part as a lookup table.
    levels = np.linspace(0, 1, 256)[:, None]
    lut = np.clip(levels * cast * gain, 0, 1) ** gamma
    pixels = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    image = lut[pixels, np.arange(3)].astype(np.float32) * (gradient**gamma)[..., None]
    sigma = rng.uniform(0, 1.2) * size / 512 if rng.random() < 0.7 else rng.uniform(1.5, 2.5)
    if sigma > 0.3:
        image = cv2.GaussianBlur(image, (0, 0), sigma)
    image += 0.012 * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(image, 0, 1), mask


def generate(
    grade: int,
    index: int,
    seed: int = 0,
    *,
    size: int = 512,
    eye: str = "right",
    lesions: bool = True,
    style: Preset = PRESETS["standard"],
) -> tuple[np.ndarray, np.ndarray]:
    """One semi-synthetic fundus photograph.

    Args:
        grade: ICDR grade 0-4.
        index: image index; with ``seed`` it fixes every random choice.
        seed: dataset seed.
        size: working (and output) resolution in pixels.
        eye: ``left`` images are mirrored.
        lesions: draw the grade's lesions (False gives the same photograph without them).
        style: how plainly the lesions are drawn (``PRESETS``).

    Returns:
        (RGB uint8 image, float32 lesion opacity map in [0, 1]), both ``size`` x ``size``.
    """
    acquisition_rng = np.random.default_rng([seed, index, 0])
    lesion_rng = np.random.default_rng([seed, index, 1])
    image = base_photograph(size).copy()
    canvas = draw_lesions(grade if lesions else 0, size, lesion_rng, style)
    alpha = canvas.alpha()
    image = image * (1 - alpha[..., None]) + canvas.colour * alpha[..., None]
    image, alpha = _acquisition(image, alpha, size, acquisition_rng, eye)
    return np.round(image * 255).astype(np.uint8), alpha
