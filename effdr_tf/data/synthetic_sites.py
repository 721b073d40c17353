"""Procedural fundus photographs from several simulated camera sites, read by several graders.

THIS DATA IS SYNTHETIC. It backs the ``varied`` preset of ``synthetic_dr``: where the older
presets paint lesions on one real photograph, every eye here gets a base photograph of its own,
and every patient is photographed at one of several sites, each with its own camera.

Anatomy, per eye (``fundus_base``). Images are drawn in the convention of a fundus camera's
display, as the examiner sees the retina: in a RIGHT eye the optic disc lies to the RIGHT of the
image centre and the macula to the left (temporal); left eyes are the mirror image. The macula
sits about 2.5 disc diameters temporal to the disc centre, slightly below it. Four arcade
vessels (superior and inferior temporal arteries and veins) leave the disc and curve around the
macula, branching as they go; smaller vessels run nasally. Pigmentation (background colour and
brightness) and the choroidal texture (tessellation) vary per patient.

Camera, per site (``SITES``): colour response, field-of-view mask (full circle, circle
truncated at top and bottom, a notch in the rim), output resolution and aspect ratio (from
433 x 289 to 5184 x 3456 nominal, drawn at a bounded working size and shrunk), vignetting,
uneven illumination, focus, JPEG quality, and a share of ungradable photographs: too dark,
blurred, overexposed (a white haze) or with eyelashes across the field (dark bands under haze).

Severity and graders (``GRADERS``): each photograph has a latent continuous severity inside its
drawn grade, ``grade + f`` with ``f`` in [0, 1); its lesions are drawn with a count that grows
with ``f`` (an image just over a grade's boundary shows few of its findings; one near the next
boundary shows many). Each simulated grader reads ``floor(severity + bias + noise)`` clipped to
0..4, so graders disagree mostly near the boundaries. The label is one grader's read, the grader
chosen at random per image (as in screening programmes where one of many graders reads each
image); every grader's read is kept for measuring agreement.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from effdr_tf.data import synthetic


@dataclasses.dataclass(frozen=True)
class Site:
    """One simulated camera and the photographers who use it.

    Attributes:
        name: short site name.
        resolution: nominal output (width, height) in pixels; generated at a bounded working
            size and shrunk, never enlarged.
        circle: field-of-view circle diameter over image height (above 1: truncated at the top
            and bottom).
        notch: a small notch cut into the rim of the field of view (as some cameras mark it).
        colour: per-channel (R, G, B) gain of the sensor.
        gamma: tone curve exponent.
        vignetting: darkening at the rim of the field of view (0: none).
        illumination: strength of a one-sided illumination gradient.
        blur: (low, high) Gaussian blur sigma at a 512-px field of view.
        jpeg_quality: the site's JPEG quality.
        ungradable: share of photographs that no grader could use.
    """

    name: str
    resolution: tuple[int, int]
    circle: float
    notch: bool
    colour: tuple[float, float, float]
    gamma: float
    vignetting: float
    illumination: float
    blur: tuple[float, float]
    jpeg_quality: int
    ungradable: float


SITES = (
    Site("A", (768, 512), 0.94, False, (1.0, 1.0, 1.0), 1.0, 0.25, 0.15, (0.0, 0.6), 95, 0.05),
    Site("B", (640, 480), 1.18, False, (1.05, 0.84, 0.72), 0.85, 0.4, 0.3, (0.3, 1.0), 85, 0.10),
    Site("C", (433, 289), 0.96, True, (0.8, 1.04, 1.22), 1.15, 0.5, 0.35, (0.5, 1.4), 70, 0.15),
    Site("D", (5184, 3456), 1.08, False, (1.12, 0.95, 0.9), 0.95, 0.3, 0.2, (0.0, 0.5), 92, 0.08),
)
SITE_NAMES = tuple(site.name for site in SITES)
UNGRADABLE_KINDS = ("dark", "blurred", "overexposed", "eyelash")

# (bias, noise standard deviation) of each simulated grader, in grade units of the latent
# severity. With EyePACS grade shares the mean pairwise quadratic-weighted kappa between these
# graders is 0.86 (``python -m effdr_tf.data.synthetic_sites``): substantial agreement, well below
# 1. Krause et al. 2018 (Ophthalmology 125(8):1264-1272, doi:10.1016/j.ophtha.2018.01.034)
# measure agreement between DR graders with this statistic; of the discrepancies between the
# ophthalmologists' majority decision and the retinal specialists' adjudication, missed
# microaneurysms were the most common (36 %): disagreement at the 0|1 boundary, as modelled here.
GRADERS = ((-0.15, 0.50), (0.0, 0.40), (0.08, 0.60), (0.20, 0.50), (-0.08, 0.65))


def site(name: str) -> Site:
    for candidate in SITES:
        if candidate.name == name:
            return candidate
    raise ValueError(f"synthetic site {name!r}: choose one of {', '.join(SITE_NAMES)}")


# --- severity and graders -------------------------------------------------------------------


def latent_severity(grades, seed: int) -> np.ndarray:
    """A continuous severity in [grade, grade + 1) per image. Healthy eyes lie mostly far from
    the 0|1 boundary (most of a screening population is clearly healthy)."""
    rng = np.random.default_rng([seed, 17])
    grades = np.asarray(grades, np.int64)
    f = np.where(grades == 0, rng.beta(1.0, 8.0, grades.size), rng.random(grades.size))
    return grades + np.minimum(f, 0.999)


def grader_reads(severity, seed: int, graders=GRADERS) -> np.ndarray:
    """Every grader's grade of every image, int [num_images, num_graders]."""
    rng = np.random.default_rng([seed, 19])
    severity = np.asarray(severity, np.float64)[:, None]
    bias = np.array([b for b, _ in graders])[None]
    noise = np.array([s for _, s in graders])[None]
    read = severity + bias + noise * rng.standard_normal((severity.shape[0], len(graders)))
    return np.clip(np.floor(read), 0, 4).astype(np.int64)


def labelling_grader(num_images: int, seed: int, num_graders: int = len(GRADERS)) -> np.ndarray:
    """Which grader's read is each image's label."""
    return np.random.default_rng([seed, 23]).integers(0, num_graders, num_images)


def inter_grader_kappa(reads: np.ndarray) -> float:
    """Mean quadratic-weighted kappa over all pairs of graders."""
    from sklearn.metrics import cohen_kappa_score

    k = reads.shape[1]
    kappas = [
        cohen_kappa_score(reads[:, i], reads[:, j], weights="quadratic", labels=list(range(5)))
        for i in range(k)
        for j in range(i + 1, k)
    ]
    return float(np.mean(kappas))


def lesion_style(severity: float) -> synthetic.Preset:
    """Lesion counts that grow with the position inside the grade: few findings just over a
    boundary, many near the next one."""
    f = severity - np.floor(severity)
    return synthetic.Preset(count=float(0.35 + 1.3 * f), size=0.85, opacity=0.8)


# --- anatomy --------------------------------------------------------------------------------


def _smooth_noise(rng, size, cells):
    """Smooth random field in about [-1, 1] with ``cells`` features across."""
    grid = rng.standard_normal((cells + 3, cells + 3)).astype(np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC) / 1.5


def _grow(rng, start, heading, length, width, step, curl, out, depth, branch_rate):
    """A vessel as a random walk with steady curl; it sheds thinner branches as it goes."""
    points = [np.asarray(start, np.float64)]
    widths = [width]
    n = max(2, int(length / step))
    for k in range(n):
        heading += curl + rng.normal(0, 0.07)
        points.append(points[-1] + step * np.array([np.cos(heading), np.sin(heading)]))
        widths.append(width * (1 - 0.55 * (k + 1) / n))
        if depth > 0 and k > 2 and rng.random() < branch_rate:
            side = rng.choice((-1.0, 1.0))
            _grow(
                rng,
                points[-1],
                heading + side * rng.uniform(0.5, 1.1),
                length * rng.uniform(0.25, 0.5),
                widths[-1] * 0.65,
                step,
                rng.normal(0, 0.02),
                out,
                depth - 1,
                branch_rate * 0.6,
            )
    out.append((np.array(points), np.array(widths)))


def fundus_base(size: int, rng: np.random.Generator, eye: str = "right"):
    """The lesion-free photograph of one eye at ``size`` x ``size``, full field of view.

    Returns:
        (RGB float32 [size, size, 3] in [0, 1], field-of-view mask float32 [size, size],
        anatomy dict with ``disc`` (x, y), ``macula`` (x, y) and ``disc_diameter`` in pixels,
        in the returned image's coordinates).
    """
    c = size / 2
    radius = 0.5 * size
    dd = size * rng.uniform(0.125, 0.145)
    # Canonical right eye: disc right of centre, macula 2.5 disc diameters temporal (left).
    disc = np.array([c + 1.25 * dd + rng.normal(0, 0.01 * size), c - 0.1 * dd])
    macula = disc + np.array([-2.5 * dd, 0.25 * dd]) + rng.normal(0, 0.05 * dd, 2)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    r = np.hypot(xx - c, yy - c) / radius

    pigment = rng.uniform(0.0, 1.0)  # 0: light fundus, 1: heavily pigmented
    light = np.array([0.86, 0.40, 0.17], np.float32)
    dark = np.array([0.55, 0.20, 0.07], np.float32)
    colour = light * (1 - pigment) + dark * pigment
    colour = colour * rng.uniform(0.92, 1.08, 3).astype(np.float32)
    shade = 1.0 - 0.35 * r**2.2 + 0.06 * _smooth_noise(rng, size, 4)
    # Choroidal tessellation: dark gaps between large choroidal vessels, stronger in lighter
    # fundi where less pigment hides them.
    band = _smooth_noise(rng, size, 14) - 0.6 * _smooth_noise(rng, size, 5)
    tessellation = np.clip(1 - np.abs(band) * 3, 0, 1) ** 2
    texture = 1 - rng.uniform(0.05, 0.22) * (1.2 - pigment) * tessellation
    image = colour[None, None] * (shade * texture)[..., None]

    # Macula: a darker, more pigmented area with a small foveal reflex.
    md = np.hypot(xx - macula[0], yy - macula[1])
    image *= (1 - rng.uniform(0.25, 0.4) * np.exp(-((md / (0.55 * dd)) ** 2)))[..., None]
    image += 0.25 * np.exp(-((md / (0.04 * dd)) ** 2))[..., None] * rng.uniform(0.3, 1.0)

    vessels = []
    for sign in (-1.0, 1.0):  # superior (-1, up) and inferior (+1) arcades
        for width, kind in ((0.085 * dd, "vein"), (0.065 * dd, "artery")):
            start = disc + np.array([rng.normal(0, 0.08 * dd), sign * 0.2 * dd])
            before = len(vessels)
            _grow(
                rng,
                start,
                np.pi + sign * rng.uniform(1.25, 1.5),  # up or down, leaning temporally
                rng.uniform(4.5, 5.5) * dd,
                width,
                0.12 * dd,
                -sign * rng.uniform(0.045, 0.06),  # curving round the macula
                vessels,
                2,
                0.09,
            )
            vessels[before:] = [(p, w, kind) for p, w in vessels[before:]]
    for heading in (-1.0, -0.3, 0.35, 1.0):  # nasal vessels
        before = len(vessels)
        _grow(
            rng,
            disc,
            heading + rng.normal(0, 0.15),
            rng.uniform(2.0, 3.0) * dd,
            0.05 * dd,
            0.12 * dd,
            rng.normal(0, 0.02),
            vessels,
            1,
            0.08,
        )
        vessels[before:] = [
            (p, w, "vein" if heading < 0 else "artery") for p, w in vessels[before:]
        ]
    layers = {"vein": np.zeros((size, size), np.float32), "artery": np.zeros_like(r)}
    for points, widths, kind in vessels:
        for k in range(len(points) - 1):
            p0 = tuple(int(round(v)) for v in points[k] * 4)
            p1 = tuple(int(round(v)) for v in points[k + 1] * 4)
            t = max(1, int(round(widths[k])))
            cv2.line(layers[kind], p0, p1, 1.0, t, cv2.LINE_AA, shift=2)
    for kind, tint in (("vein", (0.50, 0.30, 0.42)), ("artery", (0.72, 0.52, 0.62))):
        layer = cv2.GaussianBlur(layers[kind], (0, 0), max(0.5, size / 700))
        image *= 1 - np.clip(layer, 0, 1)[..., None] * (1 - np.array(tint, np.float32))

    # Optic disc: pale rim with a brighter cup, soft edge; the vessels leaving the optic
    # nerve show through it, faded.
    ddist = np.hypot((xx - disc[0]) / 0.5, (yy - disc[1]) / 0.55) / dd
    rim = np.clip((1 - ddist) * 6, 0, 1)
    cup = np.clip((rng.uniform(0.3, 0.5) - ddist) * 10, 0, 1)
    disc_colour = np.array([0.97, 0.78, 0.52], np.float32)
    image = image * (1 - 0.65 * rim[..., None]) + disc_colour * 0.65 * rim[..., None]
    image += 0.18 * cup[..., None] * np.array([0.1, 0.5, 0.5], np.float32)

    mask = np.clip((1 - r) * radius / 1.5, 0, 1).astype(np.float32)
    image = np.clip(image, 0, 1).astype(np.float32)
    anatomy = {"disc": tuple(disc), "macula": tuple(macula), "disc_diameter": float(dd)}
    if eye == "left":
        image, mask = image[:, ::-1].copy(), mask[:, ::-1].copy()
        anatomy["disc"] = (size - 1 - disc[0], disc[1])
        anatomy["macula"] = (size - 1 - macula[0], macula[1])
    return image, mask, anatomy


# --- camera ---------------------------------------------------------------------------------


def output_shape(profile: Site, max_side: int) -> tuple[int, int]:
    """(height, width) of a site's photographs when no side may exceed ``max_side``."""
    w, h = profile.resolution
    scale = min(1.0, max_side / max(w, h))
    return max(1, int(round(h * scale))), max(1, int(round(w * scale)))


def _cut_notch(mask: np.ndarray, centre, diameter: float) -> np.ndarray:
    """A small square notch in the rim of the field of view, upper right."""
    h, w = mask.shape
    cx = centre[0] + np.cos(-np.pi / 4) * diameter / 2
    cy = centre[1] + np.sin(-np.pi / 4) * diameter / 2
    half = diameter * 0.04
    ys = slice(max(0, int(cy - half)), max(0, int(cy + half)))
    xs = slice(max(0, int(cx - half)), max(0, int(cx + half)))
    mask = mask.copy()
    mask[ys, xs] = 0
    return mask


def _ungradable(kind, image, mask, rng, scale):
    h, w = mask.shape
    if kind == "dark":
        return image * rng.uniform(0.08, 0.16)
    if kind == "blurred":
        return cv2.GaussianBlur(image, (0, 0), rng.uniform(5.0, 9.0) * scale)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    cx, cy = w / 2 + np.cos(angle) * h * 0.35, h / 2 + np.sin(angle) * h * 0.35
    haze = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (rng.uniform(0.25, 0.4) * h) ** 2)))
    if kind == "eyelash":
        lashes = np.zeros((h, w), np.float32)
        for _ in range(int(rng.integers(5, 10))):
            x0 = rng.uniform(0, w)
            pts = np.stack(
                [
                    x0 + np.linspace(0, rng.uniform(-0.3, 0.3) * w, 20),
                    h - np.linspace(0, rng.uniform(0.35, 0.6) * h, 20) ** 1.0,
                ],
                axis=1,
            )
            pts[:, 0] += np.linspace(0, 1, 20) ** 2 * rng.uniform(-0.15, 0.15) * w
            t = max(2, int(rng.uniform(0.015, 0.03) * h))
            cv2.polylines(lashes, [np.round(pts).astype(np.int32)], False, 1.0, t, cv2.LINE_AA)
        lashes = cv2.GaussianBlur(lashes, (0, 0), 3.0 * scale)
        image = image * (1 - 0.8 * lashes[..., None])
        haze = np.maximum(haze, cv2.GaussianBlur(lashes, (0, 0), 12 * scale) * 1.5)
    return image * rng.uniform(1.3, 1.7) + rng.uniform(0.9, 1.3) * haze[..., None]


def photograph(
    base: np.ndarray,
    base_mask: np.ndarray,
    lesion_alpha: np.ndarray,
    profile: Site,
    rng: np.random.Generator,
    max_side: int,
    ungradable: str = "",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The site's camera applied to a square fundus ``base``.

    Returns:
        (RGB uint8 [H, W, 3], lesion opacity float32 [H, W], field-of-view mask float32 [H, W])
        at ``output_shape(profile, max_side)``.
    """
    s = base.shape[0]
    # The fundus square fills ``circle`` of the working canvas height.
    height = int(round(s / profile.circle * rng.uniform(0.98, 1.02)))
    w_nom, h_nom = profile.resolution
    width = int(round(height * w_nom / h_nom))
    canvas = np.zeros((height, width, 3), np.float32)
    alpha = np.zeros((height, width), np.float32)
    mask_in = np.zeros((height, width), np.float32)
    shift = rng.uniform(-0.02, 0.02, 2) * s
    x0 = int(round((width - s) / 2 + shift[0]))
    y0 = int(round((height - s) / 2 + shift[1]))
    sx0, sy0 = max(0, -x0), max(0, -y0)
    dx0, dy0 = max(0, x0), max(0, y0)
    cw, ch = min(s - sx0, width - dx0), min(s - sy0, height - dy0)
    canvas[dy0 : dy0 + ch, dx0 : dx0 + cw] = base[sy0 : sy0 + ch, sx0 : sx0 + cw]
    alpha[dy0 : dy0 + ch, dx0 : dx0 + cw] = lesion_alpha[sy0 : sy0 + ch, sx0 : sx0 + cw]
    mask_in[dy0 : dy0 + ch, dx0 : dx0 + cw] = base_mask[sy0 : sy0 + ch, sx0 : sx0 + cw]
    mask = mask_in
    if profile.notch:
        mask = _cut_notch(mask, (x0 + s / 2, y0 + s / 2), s)

    scale = s / 512
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    r = np.hypot(xx - width / 2 - shift[0], yy - height / 2 - shift[1]) / (s / 2)
    vignette = 1 - profile.vignetting * rng.uniform(0.7, 1.3) * np.clip(r, 0, 1) ** 3
    theta = rng.uniform(0, 2 * np.pi)
    gradient = 1 + profile.illumination * rng.uniform(0.3, 1.0) * (
        ((xx - width / 2) * np.cos(theta) + (yy - height / 2) * np.sin(theta)) / s
    )
    exposure = rng.uniform(0.85, 1.15)
    gain = np.array(profile.colour, np.float32) * rng.uniform(0.95, 1.05, 3).astype(np.float32)
    image = canvas * (vignette * gradient * exposure)[..., None] * gain
    sigma = rng.uniform(*profile.blur) * scale
    if sigma > 0.3:
        image = cv2.GaussianBlur(image, (0, 0), sigma)
    if ungradable:
        image = _ungradable(ungradable, image, mask, rng, scale)
    image = np.clip(image, 0, 1) ** (profile.gamma * rng.uniform(0.95, 1.05))
    image = image + 0.01 * rng.standard_normal(image.shape, dtype=np.float32)
    image = np.clip(image, 0, 1) * mask[..., None]

    out_h, out_w = output_shape(profile, max_side)
    if (out_h, out_w) != (height, width):
        interpolation = cv2.INTER_AREA if out_h < height else cv2.INTER_LINEAR
        image = cv2.resize(image, (out_w, out_h), interpolation=interpolation)
        alpha = cv2.resize(alpha, (out_w, out_h), interpolation=interpolation)
        mask = cv2.resize(mask, (out_w, out_h), interpolation=interpolation)
    pixels = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    ok, encoded = cv2.imencode(
        ".jpg", pixels[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, profile.jpeg_quality]
    )
    if ok:
        pixels = cv2.imdecode(encoded, cv2.IMREAD_COLOR)[..., ::-1].copy()
    return pixels, alpha * (mask > 0.5), mask


def generate(
    grade: int,
    severity: float,
    index: int,
    patient: int,
    seed: int = 0,
    *,
    size: int = 512,
    eye: str = "right",
    site_name: str = "A",
    ungradable: str = "",
    max_side: int | None = None,
    lesions: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """One photograph of the ``varied`` preset.

    Args:
        grade: ICDR grade 0-4 of the findings drawn.
        severity: latent severity in [grade, grade + 1); sets how many findings are drawn.
        index: image index; with ``seed`` it fixes the lesions and the camera's choices.
        patient: patient number; with ``seed`` and ``eye`` it fixes the eye's anatomy.
        seed: dataset seed.
        size: working size of the fundus (the field of view's diameter) in pixels.
        eye: ``right`` or ``left`` (disc right or left of the centre, as displayed).
        site_name: one of ``SITE_NAMES``.
        ungradable: empty, or one of ``UNGRADABLE_KINDS``.
        max_side: no output side exceeds it (default: ``2 * size``).
        lesions: draw the grade's lesions.

    Returns:
        (RGB uint8 image, float32 lesion opacity map in [0, 1]) at the site's output shape.
    """
    eye_code = 1 if eye == "left" else 0
    rng = np.random.default_rng([seed, patient, eye_code, 2])
    base, base_mask, anatomy = fundus_base(size, rng, eye)
    canvas = synthetic.draw_lesions(
        grade if lesions else 0,
        size,
        np.random.default_rng([seed, index, 1]),
        lesion_style(severity),
    )
    # Retinal lesions do not lie on the optic disc.
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dx, dy = anatomy["disc"]
    off_disc = np.hypot(xx - dx, yy - dy) > 0.6 * anatomy["disc_diameter"]
    alpha = canvas.alpha() * base_mask * off_disc
    image = base * (1 - alpha[..., None]) + canvas.colour * alpha[..., None]
    pixels, alpha, _ = photograph(
        image,
        base_mask,
        alpha,
        site(site_name),
        np.random.default_rng([seed, index, 3]),
        max_side or 2 * size,
        ungradable,
    )
    return pixels, alpha


def main(argv=None):
    """Prints the grader model's agreement figures and, optionally, how well
    ``fundus.assess_gradability`` separates ungradable photographs."""
    import argparse

    from effdr_tf.data import fundus
    from effdr_tf.data.sources.synthetic_dr import SyntheticDR

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--num_images", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gradability_images", type=int, default=0)
    args = parser.parse_args(argv)
    grades = [g for _, _, g in synthetic.assign_grades(args.num_images, args.seed)]
    severity = latent_severity(grades, args.seed)
    reads = grader_reads(severity, args.seed)
    labels = reads[np.arange(len(grades)), labelling_grader(len(grades), args.seed)]
    k = reads.shape[1]
    disagree = np.mean(
        [reads[:, i] != reads[:, j] for i in range(k) for j in range(i + 1, k)], axis=0
    )
    distance = np.min(np.abs(severity[:, None] - np.arange(1, 5)[None]), axis=1)
    print(f"{args.num_images} images, seed {args.seed}, {k} graders")
    print(
        f"inter-grader quadratic-weighted kappa (mean over pairs): {inter_grader_kappa(reads):.3f}"
    )
    print(
        f"grader pairs disagreeing: {disagree[distance < 0.15].mean():.3f} within 0.15 of a "
        f"boundary, {disagree[distance >= 0.35].mean():.3f} at 0.35 or more"
    )
    print(f"labels differing from the grade drawn: {np.mean(labels != np.asarray(grades)):.3f}")
    if args.gradability_images:
        source = SyntheticDR(
            num_images=args.gradability_images, seed=args.seed, preset="varied", image_size=64
        )
        info = source.image_info()
        verdicts = {True: [], False: []}
        for record in source.scan():
            gradable, _, _ = fundus.assess_gradability(source.load(record))
            verdicts[bool(info[record.id]["ungradable"])].append(gradable)
        bad, good = verdicts[True], verdicts[False]
        print(
            f"assess_gradability: {len(bad) - sum(bad)} of {len(bad)} ungradable caught, "
            f"{sum(good)} of {len(good)} gradable passed"
        )


if __name__ == "__main__":
    main()
