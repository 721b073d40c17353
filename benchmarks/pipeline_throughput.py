"""Input-pipeline throughput with RandAugment: ours against keras and keras_cv, same shards.

All pipelines read the same TFRecords (built here from synthetic fundus photographs), take a
random crop of each image (sample_distorted_bounding_box, reference recipe), resize it, flip it,
apply RandAugment with N=2, M=9 and batch 32:

* ours: ``effdr_tf.pipeline.make_dataset`` (per-image ops; crop, flip and geometric ops in one
  warp);
* keras: ``keras.layers.RandAugment(num_ops=2, factor=0.9)``, per image (``map`` before
  ``batch``, so each image gets its own ops as in ours) and per batch (its usual use: one op
  set for the whole batch);
* keras_cv: ``keras_cv.layers.RandAugment(augmentations_per_image=2, magnitude=0.9)`` on batches
  (per-image ops inside). keras_cv is not a dependency; install it for this script:
  ``pip install keras-cv==0.9.0 dm-tree tensorflow-datasets kagglehub``.

    python benchmarks/pipeline_throughput.py --sizes=224,456

The last line is ``ratio=<ours / the fastest peer, images/s> ...``.
"""

import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from benchmarks import synthetic_shards  # noqa: E402

_SIZES = flags.DEFINE_list("sizes", ["224", "456"], "Image sides to measure.")
_IMAGES = flags.DEFINE_integer("num_images", 200, "Images in the shards.")
_BATCHES = flags.DEFINE_integer("batches", 8, "Timed batches of 32 per round.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds.")
BATCH = 32
N_OPS, MAGNITUDE = 2, 9.0


def _peer_images(data_dir, size, seed=0):
    """Shards -> crop window decode -> resize -> flip, the peers' common front end."""
    import tensorflow as tf

    from effdr_tf.pipeline import input as pipeline

    paths = [s["path"] for s in pipeline.split_shards(data_dir, "train")]
    crop = pipeline.TRAIN_CROPS["reference"]

    def prepare(record, example_seed):
        encoded = pipeline.parse(record)["image/encoded"]
        window, _, _ = pipeline._decode_crop_window(encoded, example_seed, crop)
        image = tf.image.resize(tf.cast(window, tf.float32), [size, size])
        flip = tf.random.stateless_uniform([], example_seed) < 0.5
        return tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)

    records = tf.data.TFRecordDataset(paths).repeat().shuffle(256, seed=seed)
    seeds = tf.data.Dataset.random(seed=seed).batch(2)
    return tf.data.Dataset.zip((records, seeds)).map(prepare, num_parallel_calls=tf.data.AUTOTUNE)


def pipelines(data_dir, size):
    import keras
    import tensorflow as tf

    from configs import default
    from effdr_tf.pipeline import input as pipeline

    config = default.get_config()
    config.data.data_dir = data_dir
    config.data.batch_size = BATCH
    config.augment.num_layers = N_OPS
    config.augment.magnitude = MAGNITUDE
    out = {"ours": pipeline.make_dataset(config, "train").map(lambda x, y: x)}

    keras_layer = keras.layers.RandAugment(value_range=(0, 255), num_ops=N_OPS, factor=0.9)
    out["keras per image"] = (
        _peer_images(data_dir, size)
        .map(lambda x: keras_layer(x, training=True), num_parallel_calls=tf.data.AUTOTUNE)
        .batch(BATCH)
        .prefetch(tf.data.AUTOTUNE)
    )
    out["keras per batch"] = (
        _peer_images(data_dir, size)
        .batch(BATCH)
        .map(lambda x: keras_layer(x, training=True), num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
    try:
        import keras_cv
    except ImportError:
        print("keras_cv not installed: skipping it (see the module docstring)")
    else:
        cv_layer = keras_cv.layers.RandAugment(
            value_range=(0, 255), augmentations_per_image=N_OPS, magnitude=MAGNITUDE / 10
        )
        out["keras_cv"] = (
            _peer_images(data_dir, size)
            .batch(BATCH)
            .map(lambda x: cv_layer(x, training=True), num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE)
        )
    return out


def rate(ds, batches):
    iterator = iter(ds)
    for _ in range(2):  # warm-up: tracing, buffers
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * BATCH / (time.perf_counter() - start)


def main(argv):
    del argv
    cores = os.cpu_count() or 1
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(s) for s in _SIZES.value):
            folder = os.path.join(tmp, str(size))
            synthetic_shards.build(folder, size, _IMAGES.value)
            contenders = pipelines(folder, size)
            rates = {name: [] for name in contenders}
            order = list(contenders.items())
            for _ in range(_ROUNDS.value):
                order.reverse()
                for name, ds in order:
                    rates[name].append(rate(ds, _BATCHES.value))
            print(f"\n{size} px, N={N_OPS}, M={MAGNITUDE:g}, batch {BATCH}, {cores} cores")
            medians = {name: statistics.median(r) for name, r in rates.items()}
            for name, value in medians.items():
                print(f"  {name:<16} {value:8.1f} images/s  {value / cores:7.1f} per core")
            peers = {k: v for k, v in medians.items() if k != "ours"}
            fastest = max(peers, key=peers.get)
            ratios.append((size, medians["ours"] / peers[fastest], fastest))
            print(f"  ours / {fastest}: {ratios[-1][1]:.2f}")
    worst = min(ratios, key=lambda r: r[1])
    detail = ", ".join(f"{s} px {r:.2f} vs {f}" for s, r, f in ratios)
    print(f"ratio={worst[1]:.2f} ours / fastest peer images/s, worst size ({detail})")


if __name__ == "__main__":
    app.run(main)
