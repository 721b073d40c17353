"""Evaluates a trained run: metrics.json, figures and report.html (see docs/evaluation.md).

python eval.py --model_dir=RUN --split=validation,public_test,private_test
python eval.py --model_dir=RUN --data_dir=APTOS_TFREC --split=validation --tta=flip
python eval.py --model_dir=RUN_A,RUN_B --split=validation,test --tta=dihedral --fellow_eye
python eval.py --model_dir=RUN --data_dir=MESSIDOR2_TFREC --split=test --calibration=RUN
python eval.py --model_dir=RUN --images='gs://B/photos/*.jpeg' --out=gs://B/grades --runner=beam \
    --beam_pipeline_options="--runner=DataflowRunner --project=P --region=R ..."
"""

import os

from absl import app, flags

from effdr_tf import cli
from effdr_tf.beam_options import RUNNERS  # no Beam: it loads only for --runner=beam
from effdr_tf.data import image_header  # pure Python: the flags load nothing heavy
from effdr_tf.data.schema import SPLITS  # no TensorFlow: flags are checked before it loads

_MODEL_DIR = flags.DEFINE_string(
    "model_dir", None, "A train.py model_dir; several, comma-separated: an ensemble.", required=True
)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Shards to score; default: the run's own.")
_SPLITS = flags.DEFINE_list("split", ["validation"], "Splits to score.")
_TTA = flags.DEFINE_enum(
    "tta", "none", ["none", "flip", "dihedral"], "Test-time augmentation: 1, 2 or 8 views."
)
_FELLOW_EYE = flags.DEFINE_bool(
    "fellow_eye", False, "Also grade each image with its fellow eye's outputs (fit on validation)."
)
_GRADING = flags.DEFINE_string(
    "grading", None, "With --images: grading.json with cut points; default the run's own eval's."
)
_TTA_ROTATIONS = flags.DEFINE_list(
    "tta_rotations", [], "Extra test-time views: the image rotated by these degrees (e.g. 10,-10)."
)
_OUT = flags.DEFINE_string("out", None, "Output folder; default MODEL_DIR/eval_<data folder>.")
_CALIBRATION = flags.DEFINE_string(
    "calibration",
    None,
    "Operating points, cut points and fellow-eye stage from this grading.json instead of this "
    "data's validation split (for an external test set): a file, an eval.py output folder, "
    "or a run (its eval_<data folder>/grading.json).",
)
_IMAGES = flags.DEFINE_string(
    "images", None, "Photographs to grade: a folder, a CSV of paths or a glob pattern (gs:// too)."
)
_RUNNER = flags.DEFINE_enum(
    "runner",
    "local",
    list(RUNNERS),
    "With --images: grade here (local) or on an Apache Beam pipeline (beam; sharded CSVs, no "
    "--gradcam).",
)
_BEAM_PIPELINE_OPTIONS = flags.DEFINE_string(
    "beam_pipeline_options",
    None,
    'With --runner=beam: Beam options as one string, e.g. "--runner=DataflowRunner '
    '--project=P --region=R --temp_location=gs://B/tmp"; empty: run here, a process a core.',
)
_GRADCAM = flags.DEFINE_bool("gradcam", False, "With --images: a Grad-CAM overlay per image.")
_REFERABLE = flags.DEFINE_enum(
    "referable",
    "high_sensitivity",
    ["high_sensitivity", "high_specificity", "grade_fitted", "argmax"],
    "With --images: the referable column's rule, an operating point or the fitted grade from "
    "grading.json (fitted on validation), or argmax >= 2 (not validated).",
)
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", 0, "With --images: photographs per batch (0: 16, with --gradcam 4)."
)
_EXPLAIN = flags.DEFINE_enum(
    "explain",
    "gradcam:stride16",
    ["gradcam:last", "gradcam:stride16", "hirescam:last", "hirescam:stride16"],
    "With --gradcam: the map (method:stage) drawn on each photograph; the default beat two "
    "nulls by the most on the demo (docs/evaluation.md, class-activation maps).",
)
flags.register_validator("batch_size", lambda v: v >= 0, message="--batch_size must be 0 or more")
_PRIOR_CORRECTION = flags.DEFINE_bool(
    "prior_correction",
    True,
    "A run trained on rebalanced classes (balanced sampler, class weights): move its "
    "probabilities to the training split's natural class shares (Saerens et al. 2002). "
    "--noprior_correction: the probabilities as the model learnt them.",
)
_BOOTSTRAP = flags.DEFINE_integer("bootstrap", 1000, "Bootstrap rounds for intervals (0: off).")
_MAX_MEGAPIXELS = flags.DEFINE_float(
    "max_megapixels",
    image_header.DEFAULT_MAX_MEGAPIXELS,
    "With --images: photographs whose header declares more pixels get an error row instead "
    "of being decoded (16-bit: twice).",
)
flags.register_validator(
    _MAX_MEGAPIXELS.name, lambda v: v > 0, message="--max_megapixels must be above 0"
)

# Checked while the flags are parsed: one line and exit code 2 before TensorFlow loads.
flags.register_validator("bootstrap", lambda v: v >= 0, message="--bootstrap must be 0 or more")


def _angles(values) -> bool:
    try:
        return all(abs(float(a)) <= 180 for a in values)
    except ValueError:
        return False


flags.register_validator(
    "tta_rotations", _angles, message="--tta_rotations takes angles in degrees, -180 to 180"
)
flags.register_validator(
    "split",
    lambda v: bool(v) and all(s in SPLITS for s in v),
    message=f"--split takes one or more of {', '.join(SPLITS)}",
)


def _grade_images():
    from effdr_tf.errors import EffdrError

    if not _OUT.value:
        raise EffdrError("--images needs --out (where predictions.csv goes)")
    if "," in _MODEL_DIR.value:
        raise EffdrError("--images grades with one run; --model_dir names several")
    shared = dict(
        max_pixels=_MAX_MEGAPIXELS.value * 1e6,
        grading=_GRADING.value,
        referable=_REFERABLE.value,
        batch_size=_BATCH_SIZE.value or None,
        # Given views must match the grading.json's; left out, its views are applied.
        tta=_TTA.value if _TTA.present else None,
        rotations=_TTA_ROTATIONS.value if _TTA_ROTATIONS.present else None,
        prior_correction=_PRIOR_CORRECTION.value,
    )
    if _RUNNER.value == "beam":
        if _GRADCAM.value:
            raise EffdrError("--gradcam is not offered with --runner=beam; use --runner=local")
        from effdr_tf.evaluation import beam_grading

        result = beam_grading.grade_with_beam(
            _MODEL_DIR.value,
            _IMAGES.value,
            _OUT.value,
            beam_options=_BEAM_PIPELINE_OPTIONS.value,
            workers=os.cpu_count() or 1,
            **shared,
        )
    else:
        from effdr_tf.evaluation import predict

        result = predict.predict_images(
            _MODEL_DIR.value,
            _IMAGES.value,
            _OUT.value,
            gradcam=_GRADCAM.value,
            method=_EXPLAIN.value.split(":")[0],
            stage=_EXPLAIN.value.split(":")[1],
            **shared,
        )
    if not result["graded"]:
        raise EffdrError(
            f"{_IMAGES.value}: none of the {result['unreadable']} images could be graded; "
            f"the reasons are in {result['csv']}"
        )
    print(
        f"graded {result['graded']} images, {result['unreadable']} unreadable: {result['csv']}"
        + (f" (grade_fitted: cut points of {result['grading']})" if result["grading"] else "")
        + f"\nreferable: {result['referable']['description']}"
        + (f"\nGrad-CAM heat scale: {result['heat_scale']['value']:.4g}, the "
           f"{result['heat_scale']['from']}" if result["heat_scale"] else "")
    )  # fmt: skip


@cli.entry_point
def main(argv):
    del argv
    from effdr_tf.errors import EffdrError

    if _RUNNER.value != "local" and not _IMAGES.value:
        raise EffdrError(f"--runner={_RUNNER.value} grades photographs: it needs --images")
    if _BEAM_PIPELINE_OPTIONS.value and _RUNNER.value != "beam":
        raise EffdrError("--beam_pipeline_options applies to --runner=beam only")
    if _IMAGES.value:
        _grade_images()
        return
    from effdr_tf.evaluation import evaluate

    summary = evaluate.evaluate(
        _MODEL_DIR.value,
        data_dir=_DATA_DIR.value,
        splits=_SPLITS.value,
        tta=_TTA.value,
        rotations=[float(a) for a in _TTA_ROTATIONS.value],
        out_dir=_OUT.value,
        bootstrap_rounds=_BOOTSTRAP.value,
        fellow=_FELLOW_EYE.value,
        calibration=_CALIBRATION.value,
        prior_correction=_PRIOR_CORRECTION.value,
    )
    for split, result in summary["splits"].items():
        referable = result.get("referable", {}).get("auc")
        extra = f" referable_auc={referable:.4f}" if referable is not None else ""
        fitted = result.get("fitted_grades")
        if fitted:
            extra += f" kappa_fitted_cut_points={fitted['kappa']:.4f}"
        second = (result.get("fellow_eye") or {}).get("image")
        if second:
            extra += f" kappa_fellow_eye={second['kappa']:.4f}"
        kappa_95 = (result.get("bootstrap_95") or {}).get("kappa")
        if kappa_95:
            extra += f" kappa_95=[{kappa_95[0]:.4f},{kappa_95[1]:.4f}]"
        print(
            f"{split}: n={result['count']} patients={result['patients']} "
            f"accuracy={result['accuracy']:.4f} kappa={result['kappa']:.4f}{extra}"
        )
    for what, where in summary["fitted_from"].items():
        print(f"{what}: {where}")
    for warning in summary["warnings"]:
        print(f"warning: {warning}")
    print(f"report: {summary['out_dir']}/report.html")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags_or_exit)
