"""Peak memory of Grad-CAM on an EfficientNet-B5 at 456 px: the whole forward pass under one
gradient tape (the method before) against the model cut at the explained layer, with only the
part after it recorded (``gradcam.heatmaps``).

Each method runs in a fresh process on the same 20 synthetic photographs (random weights: the
memory does not depend on them), at the same batch size; peak memory is the process's VmHWM
(``tests/memory.py``), measured from outside.

    python benchmarks/gradcam_memory.py [--batch_size=2] [--images=20]

The last line is ``ratio=<peak before / peak now> ...``.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _full_tape(model, images):
    """Grad-CAM as ``eval.py --images --gradcam`` computed it before: one tape over the whole
    forward pass, so every activation of the network is held for the backward pass."""
    import keras
    import tensorflow as tf

    from effdr_tf.evaluation import gradcam

    layer = gradcam.last_feature_layer(model)
    probe = keras.Model(model.inputs, [layer.output, model.output])
    with tf.GradientTape() as tape:
        features, logits = probe(images, training=False)
        score = tf.reduce_sum(tf.gather(logits, tf.argmax(logits, -1), batch_dims=1))
    grads = tape.gradient(score, features)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    return tf.nn.relu(tf.reduce_sum(weights * features, -1)).numpy()


def child(method: str, batch_size: int, count: int, size: int, variant: str) -> None:
    import numpy as np

    from effdr_tf.data import synthetic
    from effdr_tf.evaluation import gradcam
    from effdr_tf.models import network

    model = network.build_efficientnet(variant, input_shape=(size, size, 3))
    rng = np.random.default_rng(0)
    photo = synthetic.base_photograph(size).astype(np.float32)
    images = [np.clip(photo + rng.normal(0, 8, photo.shape), 0, 255) for _ in range(count)]
    for start in range(0, count, batch_size):
        batch = np.stack(images[start : start + batch_size]).astype(np.float32)
        if method == "full_tape":
            _full_tape(model, batch)
        else:
            gradcam.heatmaps(model, batch)
    print(json.dumps({"method": method, "images": count}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", default=None)
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--size", type=int, default=456)
    parser.add_argument("--variant", default="b5")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.batch_size, args.images, args.size, args.variant)
        return
    from tests.memory import run_measured

    peaks = {}
    for method in ("full_tape", "cut_at_layer"):
        result, peak = run_measured(
            [os.path.abspath(__file__), f"--child={method}", f"--batch_size={args.batch_size}",
             f"--images={args.images}", f"--size={args.size}", f"--variant={args.variant}"],
            cwd=REPO, timeout=3000,
        )  # fmt: skip
        if result.returncode != 0:
            raise SystemExit(f"{method} failed:\n{result.stderr[-2000:]}")
        peaks[method] = peak["largest_mib"]
        print(
            f"{method:>13}: peak {peak['largest_mib']:.0f} MiB ({args.variant}, {args.size} px, "
            f"{args.images} photographs, batch {args.batch_size})",
            flush=True,
        )
    print(
        f"ratio={peaks['full_tape'] / peaks['cut_at_layer']:.2f} "
        f"full_tape_mib={peaks['full_tape']:.0f} cut_at_layer_mib={peaks['cut_at_layer']:.0f}"
    )


if __name__ == "__main__":
    main()
