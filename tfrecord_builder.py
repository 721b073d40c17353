"""Fundus datasets to sharded TFRecords.

python tfrecord_builder.py --data=kaggle_dr --data_dir=RAW --output_dir=TFREC --variant=b5
python tfrecord_builder.py --data=synthetic_dr --num_images=2000 --output_dir=TFREC
python tfrecord_builder.py --data=synthetic_dr --output_dir=TFREC --runner=beam \
    --beam_pipeline_options="--runner=DataflowRunner --project=P --region=R ..."
"""

import os

from absl import app, flags

from effdr_tf import cli
from effdr_tf.beam_options import RUNNERS
from effdr_tf.data import fundus
from effdr_tf.data.sources import SOURCES  # no TensorFlow: flags are checked before it loads

_DATA = flags.DEFINE_enum(
    "data", "synthetic_dr", list(SOURCES), "Dataset layout: see docs/datasets.md."
)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Folder of the raw dataset.")
_LABELS = flags.DEFINE_string(
    "labels", None, "--data=csv: label file (default DATA_DIR/labels.csv)."
)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where the shards go (local or gs://).")
_VARIANT = flags.DEFINE_string("variant", None, "Write at this EfficientNet's resolution.")
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size", None, "Square side in pixels (overrides --variant)."
)
_PREPROCESS = flags.DEFINE_enum(
    "preprocess", None, ["crop", "btgraham", "none"], "Default: crop (CIFAR: none)."
)
_NUM_SHARDS = flags.DEFINE_integer("num_shards", None, "Shards of the largest split.")
_WORKERS = flags.DEFINE_integer(
    "workers",
    os.cpu_count() or 1,
    "Preprocessing processes (--runner=beam: the local runner's, without --beam_pipeline_options).",
)
_RUNNER = flags.DEFINE_enum(
    "runner",
    "local",
    list(RUNNERS),
    "local: a process pool on this machine; beam: Apache Beam pipelines (pip install -e "
    "'.[beam]'), the same files.",
)
_BEAM_PIPELINE_OPTIONS = flags.DEFINE_string(
    "beam_pipeline_options",
    None,
    '--runner=beam: Beam pipeline options as one string, e.g. "--runner=DataflowRunner '
    '--project=P --region=R --temp_location=gs://B/tmp"; default: Beam local runner.',
)
_VAL_FRACTION = flags.DEFINE_float("val_fraction", 0.1, "Validation patients carved from train.")
_WITHHOLD_LABELS = flags.DEFINE_float(
    "withhold_labels",
    0.0,
    "Training patients written to the unlabelled split without their grades (few-label studies).",
)
_SEED = flags.DEFINE_integer("seed", 0, "Validation split, example order, synthetic images.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 1000, "--data=synthetic_dr: how many images.")
_UNLABELLED = flags.DEFINE_enum(
    "unlabelled",
    "reject",
    ["reject", "keep"],
    "--data=csv: rows with an empty label are rejected, or kept as the unlabelled split.",
)
_SYNTHETIC_PRESET = flags.DEFINE_enum(
    "synthetic_preset",
    "standard",
    ["standard", "hard", "varied"],
    "--data=synthetic_dr: plain lesions; fewer, smaller, fainter ones and noisy labels; or "
    "procedural eyes from several camera sites, graded by simulated graders.",
)
_SYNTHETIC_TEST_SITES = flags.DEFINE_list(
    "synthetic_test_sites",
    [],
    "--synthetic_preset=varied: sites (A, B, C, D) whose patients form the test split.",
)
_IMAGE_FORMAT = flags.DEFINE_enum("image_format", "jpeg", ["jpeg", "png"], "Encoding in shards.")
_JPEG_QUALITY = flags.DEFINE_integer("jpeg_quality", 95, "JPEG quality 1-100.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Rebuild a complete output folder.")
_MAX_MEGAPIXELS = flags.DEFINE_float(
    "max_megapixels",
    fundus.DEFAULT_MAX_MEGAPIXELS,
    "Inputs whose header declares more pixels are rejected before decoding (16-bit: twice).",
)
_NEAR_DUPLICATE_DISTANCE = flags.DEFINE_integer(
    "near_duplicate_distance",
    24,
    "Sources without patient ids whose photographs repeat (APTOS 2019): training images whose "
    "256-bit perceptual hashes differ in at most this many bits stay in one split; -1: off.",
)
flags.mark_flag_as_required("output_dir")

# Checked while the flags are parsed: a bad value is one line and exit code 2, before
# TensorFlow loads and before anything is written.
for _flag, _check, _message in (
    (_IMAGE_SIZE, lambda v: v is None or 32 <= v <= 4096, "must be 32 to 4096 pixels"),
    (_NUM_SHARDS, lambda v: v is None or v >= 1, "must be at least 1"),
    (_WORKERS, lambda v: v >= 1, "must be at least 1"),
    (_NUM_IMAGES, lambda v: v >= 1, "must be at least 1"),
    (_JPEG_QUALITY, lambda v: 1 <= v <= 100, "must be between 1 and 100"),
    (_VAL_FRACTION, lambda v: 0.0 <= v < 1.0, "must be in [0, 1)"),
    (_WITHHOLD_LABELS, lambda v: 0.0 <= v < 1.0, "must be in [0, 1)"),
    (_MAX_MEGAPIXELS, lambda v: v > 0, "must be above 0"),
    (_NEAR_DUPLICATE_DISTANCE, lambda v: -1 <= v <= 128, "must be -1 (off) or 0 to 128"),
):
    flags.register_validator(_flag.name, _check, message=f"--{_flag.name} {_message}")
flags.register_multi_flags_validator(
    [_RUNNER.name, _BEAM_PIPELINE_OPTIONS.name],
    lambda v: v["runner"] == "beam" or v["beam_pipeline_options"] is None,
    message="--beam_pipeline_options needs --runner=beam",
)


@cli.entry_point
def main(argv):
    del argv
    beam_options = None
    if _RUNNER.value == "beam":
        from effdr_tf.beam_options import pipeline_options

        # Checked before any work: Beam missing, or an option it does not know, is one line.
        beam_options = pipeline_options(_BEAM_PIPELINE_OPTIONS.value, _WORKERS.value)
    from effdr_tf.data import builder, sources
    from effdr_tf.models import VARIANTS, canonical_variant

    size = _IMAGE_SIZE.value
    if size is None and _VARIANT.value:
        size = VARIANTS[canonical_variant(_VARIANT.value)].resolution
    source = sources.make_source(
        _DATA.value,
        _DATA_DIR.value,
        labels=_LABELS.value,
        num_images=_NUM_IMAGES.value,
        seed=_SEED.value,
        image_size=size,
        preset=_SYNTHETIC_PRESET.value,
        test_sites=tuple(_SYNTHETIC_TEST_SITES.value) or None,
        unlabelled=_UNLABELLED.value,
    )
    options = builder.BuildOptions(
        image_size=size or source.default_image_size,
        preprocess=_PREPROCESS.value or source.default_preprocess,
        num_shards=_NUM_SHARDS.value,
        val_fraction=_VAL_FRACTION.value,
        withhold_labels=_WITHHOLD_LABELS.value,
        seed=_SEED.value,
        image_format=_IMAGE_FORMAT.value,
        jpeg_quality=_JPEG_QUALITY.value,
        max_megapixels=_MAX_MEGAPIXELS.value,
        near_duplicate_distance=(
            None if _NEAR_DUPLICATE_DISTANCE.value < 0 else _NEAR_DUPLICATE_DISTANCE.value
        ),
    )
    manifest = builder.build(
        source,
        _OUTPUT_DIR.value,
        options,
        workers=_WORKERS.value,
        overwrite=_OVERWRITE.value,
        runner=_RUNNER.value,
        beam_options=beam_options,
    )
    print(builder.summary(manifest, _OUTPUT_DIR.value))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags_or_exit)
