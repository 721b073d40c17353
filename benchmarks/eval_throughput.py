"""eval.py's scoring speed against a bare ``model.predict`` on the same tf.data input.

A run folder is made here (config.json and export/model.keras of an untrained B0: speed does
not depend on the weights) over synthetic fundus shards. Per round:

* ours: ``effdr_tf.evaluation.scoring.score_split`` (what eval.py runs per split: the eval
  pipeline with ids, patient ids and eyes, softmax, collection into arrays);
* peer: ``model.predict`` on ``make_dataset(config, split, training=False)`` (images only);
* ours with ``tta="flip"``: the cost of flip test-time augmentation.

The fixed cost after scoring (metrics, bootstrap, figures, report) is timed once and reported
separately: it does not grow with the split.

    python benchmarks/eval_throughput.py --image_size=128 --num_images=400

The last line is ``ratio=<ours / model.predict, images/s>``.
"""

import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402

from benchmarks import synthetic_shards  # noqa: E402

_VARIANT = flags.DEFINE_string("variant", "b0", "EfficientNet variant.")
_SIZE = flags.DEFINE_integer("image_size", 128, "Image side.")
_IMAGES = flags.DEFINE_integer("num_images", 400, "Images in the shards.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds.")


def main(argv):
    del argv
    from effdr_tf.evaluation import evaluate, scoring
    from effdr_tf.pipeline import input as pipeline

    with tempfile.TemporaryDirectory() as tmp:
        data_dir, run_dir = os.path.join(tmp, "data"), os.path.join(tmp, "run")
        synthetic_shards.build(data_dir, _SIZE.value, _IMAGES.value, val_fraction=0.5)
        synthetic_shards.make_run(run_dir, data_dir, _VARIANT.value, _SIZE.value)
        run = scoring.load_run(run_dir)
        config = scoring.eval_config(run, data_dir)
        split = "validation"
        count = pipeline.load_manifest(data_dir)["splits"][split]["count"]

        def ours(tta="none"):
            start = time.perf_counter()
            scoring.score_split(run, data_dir, split, tta=tta)
            return count / (time.perf_counter() - start)

        def peer():
            ds = pipeline.make_dataset(config, split, training=False).map(lambda x, y: x)
            start = time.perf_counter()
            run.model.predict(ds, verbose=0)
            return count / (time.perf_counter() - start)

        ours(), peer(), ours("flip")  # tracing and warm-up
        results = {"ours": [], "peer": [], "flip": []}
        for r in range(_ROUNDS.value):
            order = ("ours", "peer", "flip") if r % 2 == 0 else ("flip", "peer", "ours")
            for who in order:
                rate = {"ours": ours, "peer": peer, "flip": lambda: ours("flip")}[who]()
                results[who].append(rate)
                print(f"round {r + 1} {who}: {rate:.1f} images/s", flush=True)
        start = time.perf_counter()
        evaluate.evaluate(run_dir, splits=[split], out_dir=os.path.join(tmp, "eval"))
        total = time.perf_counter() - start
    mine = statistics.median(results["ours"])
    theirs = statistics.median(results["peer"])
    flip = statistics.median(results["flip"])
    print(
        f"{_VARIANT.value} {_SIZE.value}px, {count} images: eval scoring {mine:.1f} images/s, "
        f"model.predict {theirs:.1f} images/s; with flip TTA {flip:.1f} images/s "
        f"({mine / flip:.2f}x the time); whole eval.py run incl. metrics, 1000 bootstrap "
        f"rounds, figures and report: {total:.1f} s"
    )
    print(f"ratio={mine / theirs:.3f}")


if __name__ == "__main__":
    app.run(main)
