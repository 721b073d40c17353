"""Synthetic fundus shards for the benchmarks (no TensorFlow at import: the builder's spawned
workers re-import the launching script)."""

import json
import os


def build(folder: str, size: int, num_images: int, val_fraction: float = 0.0) -> None:
    from effdr_tf.data import builder
    from effdr_tf.data.sources import make_source

    source = make_source("synthetic_dr", num_images=num_images, seed=0, image_size=size)
    options = builder.BuildOptions(image_size=size, val_fraction=val_fraction)
    builder.build(source, folder, options, workers=os.cpu_count() or 1, progress=False)


def build_hard(folder: str, size: int, num_images: int, val_fraction: float) -> None:
    """The ``hard`` preset, cropped, seed 0, as the grading benchmarks train on; a folder that
    already holds a build is kept."""
    from effdr_tf.data import builder
    from effdr_tf.data.sources.synthetic_dr import SyntheticDR

    if os.path.exists(os.path.join(folder, "manifest.json")):
        return
    source = SyntheticDR(num_images=num_images, seed=0, image_size=size, preset="hard")
    options = builder.BuildOptions(
        image_size=size, preprocess="crop", seed=0, val_fraction=val_fraction
    )
    builder.build(source, folder, options, workers=os.cpu_count() or 1, progress=False)


def build_preset(
    folder: str,
    preset: str,
    size: int,
    num_images: int,
    *,
    val_fraction: float,
    withhold_labels: float = 0.0,
    preprocess: str = "crop",
    seed: int = 0,
) -> None:
    """Any synthetic_dr preset, as a benchmark protocol names it; a folder that already holds
    a build is kept."""
    from effdr_tf.data import builder
    from effdr_tf.data.sources.synthetic_dr import SyntheticDR

    if os.path.exists(os.path.join(folder, "manifest.json")):
        return
    source = SyntheticDR(num_images=num_images, seed=seed, image_size=size, preset=preset)
    options = builder.BuildOptions(
        image_size=size,
        preprocess=preprocess,
        seed=seed,
        val_fraction=val_fraction,
        withhold_labels=withhold_labels,
    )
    builder.build(source, folder, options, workers=os.cpu_count() or 1, progress=False)


def make_run(run_dir, data_dir, variant, image_size):
    """A run folder of an untrained ``variant`` at ``image_size`` px over ``data_dir``."""
    from configs import default
    from effdr_tf import models

    config = default.get_config(variant)
    config.data.data_dir = data_dir
    config.data.eval_crop_fraction = 1.0
    os.makedirs(os.path.join(run_dir, "export"))
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump(config.to_dict(), f)
    model = models.efficientnet(variant, num_classes=5, input_shape=(image_size, image_size, 3))
    model.save(os.path.join(run_dir, "export", "model.keras"))
