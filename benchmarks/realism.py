"""How far the built-in photographs are from a folder of real fundus photographs.

    python benchmarks/realism.py --real=DIR [--presets=standard,hard] [--num_images=200]
        [--image_size=224] [--rounds=1000] [--subsets=100] [--seed=0] [--out=FILE.json]

For each ``synthetic_dr`` preset (default: every name in ``synthetic.PRESETS``), generates
``--num_images`` photographs, reads up to ``--num_images`` photographs found anywhere under DIR
(in a seeded random order; files that cannot be read or fail the builder's quality check are
reported one line each and skipped), crops both to the fundus at ``--image_size`` with the
builder's ``crop`` preprocessing, and compares their ImageNet EfficientNet-Lite0 features by
kernel inception distance (``effdr_tf/evaluation/realism.py``: unbiased MMD^2, cubic polynomial
kernel, averaged over subsets; the interval is a bootstrap over the images of both sets).

Printed, as KID x 1000: the real folder against itself (a random half against the other half:
its expected value is 0, so its interval is the noise floor at this many photographs), then each
preset against the whole real set. The last line is ``ratio=<KID of a preset over KID of the
first preset>`` for each later preset. A missing folder, or one without a readable photograph,
is one ``error:`` line and exit code 2.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
flags.DEFINE_string("real", None, "Folder of real fundus photographs (searched recursively).")
flags.DEFINE_list("presets", [], "synthetic_dr presets to compare; default all of them.")
flags.DEFINE_integer("num_images", 200, "Photographs per preset, and at most this many real.")
flags.DEFINE_integer("image_size", 224, "Side of the fundus crop the features are taken at.")
flags.DEFINE_integer("rounds", 1000, "Bootstrap rounds of the interval.")
flags.DEFINE_integer("subsets", 100, "Subsets averaged in each KID.")
flags.DEFINE_integer("seed", 0, "Seed of the built-in photographs, the file order and resamples.")
flags.DEFINE_integer("batch_size", 32, "Photographs per forward pass.")
flags.DEFINE_string("weights", None, "Lite0 ImageNet weights file; default the converted cache.")
flags.DEFINE_string("out", None, "Also write the figures to this JSON file.")

# Real-vs-real needs two halves of at least 2 photographs each.
MIN_REAL = 4


def built_in(preset: str, num_images: int, image_size: int, seed: int):
    """``num_images`` synthetic_dr photographs of ``preset``, prepared as the real ones are,
    and how many the quality check rejected."""
    from effdr_tf.data import fundus
    from effdr_tf.data.schema import Record
    from effdr_tf.data.sources.synthetic_dr import SyntheticDR
    from effdr_tf.evaluation import realism

    source = SyntheticDR(num_images=num_images, seed=seed, image_size=image_size, preset=preset)
    source.check()
    images, rejected = [], 0
    for record in source.scan():
        if not isinstance(record, Record):
            continue
        try:
            images.append(realism.prepare(source.load(record), image_size))
        except fundus.RejectedImageError:  # ungradable, as the builder would drop it
            rejected += 1
    return np.stack(images), rejected


def text(estimate) -> str:
    low, high = estimate.interval
    return (
        f"KID x 1000 = {1000 * estimate.value:.2f} (95 % CI {1000 * low:.2f} to "
        f"{1000 * high:.2f}; subset spread {1000 * estimate.spread:.2f}, "
        f"{estimate.subset_size} a subset)"
    )


def main(argv) -> int:
    del argv
    from effdr_tf import fileio
    from effdr_tf.data import synthetic
    from effdr_tf.errors import EffdrError
    from effdr_tf.evaluation import realism

    if not FLAGS.real:
        raise EffdrError("--real=DIR is required: a folder of real fundus photographs")
    presets = FLAGS.presets or list(synthetic.PRESETS)
    unknown = [p for p in presets if p not in synthetic.PRESETS]
    if unknown:
        raise EffdrError(
            f"--presets={','.join(unknown)}: choose from {', '.join(synthetic.PRESETS)}"
        )
    if FLAGS.num_images < MIN_REAL:
        raise EffdrError(f"--num_images={FLAGS.num_images}: need at least {MIN_REAL}")
    start = time.time()
    real, skipped = realism.read_folder(FLAGS.real, FLAGS.num_images, FLAGS.image_size, FLAGS.seed)
    if len(real) < MIN_REAL:
        first = f" (first: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise EffdrError(
            f"{FLAGS.real}: {len(real)} readable photographs, need at least {MIN_REAL}; "
            f"{len(skipped)} files skipped{first}"
        )
    for path, reason in skipped:
        print(f"skipped {path}: {reason}")
    extract = realism.FeatureExtractor(FLAGS.image_size, FLAGS.weights, FLAGS.batch_size)
    real_features = extract(real)
    print(
        f"real: {len(real)} photographs from {FLAGS.real} ({len(skipped)} skipped); features: "
        f"ImageNet EfficientNet-Lite0, last stage average-pooled, fundus crop "
        f"{FLAGS.image_size} px"
    )
    results = {"real": FLAGS.real, "real_images": len(real), "skipped": len(skipped)}

    def compare(x, y):
        return realism.kid(x, y, subsets=FLAGS.subsets, rounds=FLAGS.rounds, seed=FLAGS.seed)

    halves = np.random.default_rng([FLAGS.seed, 1]).permutation(len(real))
    first, second = halves[: len(real) // 2], halves[len(real) // 2 :]
    floor = compare(real_features[first], real_features[second])
    print(f"real vs real ({len(first)} against {len(second)}): {text(floor)}")
    results["real_vs_real"] = vars(floor)
    kids = {}
    for preset in presets:
        images, rejected = built_in(preset, FLAGS.num_images, FLAGS.image_size, FLAGS.seed)
        estimate = compare(extract(images), real_features)
        kids[preset] = estimate.value
        print(f"{preset} ({len(images)} photographs, {rejected} rejected): {text(estimate)}")
        results[preset] = {**vars(estimate), "images": len(images), "rejected": rejected}
    seconds = time.time() - start
    print(f"wall time {seconds:.0f} s")
    if FLAGS.out:
        fileio.write_atomic(FLAGS.out, json.dumps(results, indent=2))
    reference = presets[0]
    ratios = {p: kids[p] / kids[reference] if kids[reference] else float("nan") for p in kids}
    later = presets[1:] or presets
    head, rest = later[0], later[1:]
    others = "".join(f"; {p} {ratios[p]:.3f}" for p in rest)
    print(f"ratio={ratios[head]:.3f} KID of {head} over KID of {reference}{others}")
    return 0


if __name__ == "__main__":
    from effdr_tf import cli

    app.run(cli.entry_point(main))
