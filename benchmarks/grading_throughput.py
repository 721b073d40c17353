"""Batch grading of photographs: ``eval.py --images --runner=beam`` against ``--runner=local``.

A run folder is made here (an untrained EfficientNet: speed does not depend on the weights)
and a folder of synthetic fundus photographs (JPEG, ``--photo_side`` px square). Per round,
in alternating order:

* local: ``predict.predict_images`` (what ``eval.py --images`` runs): one process reads,
  crops and resizes the photographs and grades them in batches;
* beam: ``beam_grading.grade_with_beam`` on Beam's local runner (FnApiRunner) with
  ``--workers`` processes, each loading the model once (RunInference).

Each figure is the wall time of the whole call (start-up included), as images/s and images/s
per CPU of this machine. ``--num_images`` takes several sizes: the difference between two
sizes' wall times is the marginal rate, what a long job on many workers approaches once
its fixed cost (loading the model, starting workers) is spread over many photographs.

    python benchmarks/grading_throughput.py --num_images=200,1200 --workers=2 --rounds=2

The last line is ``ratio=<beam / local, images/s at the largest size>``.
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

from benchmarks.synthetic_shards import make_run  # noqa: E402

_VARIANT = flags.DEFINE_string("variant", "b0", "EfficientNet variant.")
_SIZE = flags.DEFINE_integer("image_size", 224, "The model's input side.")
_PHOTO = flags.DEFINE_integer("photo_side", 1024, "Side of the synthetic photographs.")
_IMAGES = flags.DEFINE_list("num_images", ["200", "1200"], "Photographs graded per call.")
_WORKERS = flags.DEFINE_integer("workers", 2, "Beam worker processes.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Alternating rounds per size.")


def _photographs(folder: str, count: int) -> None:
    import cv2

    from effdr_tf.data import synthetic

    os.makedirs(folder)
    for i in range(count):
        image, _ = synthetic.generate(i % 5, i, size=_PHOTO.value)
        path = os.path.join(folder, f"{i:05d}.jpeg")
        cv2.imwrite(path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])


def main(argv):
    del argv
    from effdr_tf.evaluation import beam_grading, predict

    sizes = sorted(int(n) for n in _IMAGES.value)
    cpus = os.cpu_count() or 1
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = os.path.join(tmp, "run")
        make_run(run_dir, "", _VARIANT.value, _SIZE.value)
        folders = {n: os.path.join(tmp, f"photos{n}") for n in sizes}
        for n, folder in folders.items():
            _photographs(folder, n)

        def local(n, out):
            return predict.predict_images(run_dir, folders[n], out)

        def beam(n, out):
            return beam_grading.grade_with_beam(run_dir, folders[n], out, workers=_WORKERS.value)

        calls = {"local": local, "beam": beam}
        for n in sizes:
            for r in range(_ROUNDS.value):
                for who in ("local", "beam") if r % 2 == 0 else ("beam", "local"):
                    start = time.perf_counter()
                    result = calls[who](n, os.path.join(tmp, f"out_{who}_{n}_{r}"))
                    elapsed = time.perf_counter() - start
                    assert result["graded"] == n, result
                    seconds.setdefault((who, n), []).append(elapsed)
                    print(f"{n} photographs, round {r + 1}, {who}: {elapsed:.1f} s", flush=True)
    print(
        f"{_VARIANT.value} at {_SIZE.value} px, {_PHOTO.value} px JPEG photographs, {cpus} CPUs; "
        f"Beam: FnApiRunner, {_WORKERS.value} processes; median of {_ROUNDS.value} rounds"
    )
    rate = {}
    for who in ("local", "beam"):
        for n in sizes:
            rate[who, n] = n / statistics.median(seconds[who, n])
            print(
                f"  {who:5s} {n:5d} photographs: {rate[who, n]:6.1f} images/s, "
                f"{rate[who, n] / cpus:5.1f} per CPU"
            )
        if len(sizes) > 1:
            lo, hi = sizes[0], sizes[-1]
            extra = statistics.median(seconds[who, hi]) - statistics.median(seconds[who, lo])
            marginal = (hi - lo) / extra
            print(
                f"  {who:5s} marginal {lo} -> {hi}: {marginal:6.1f} images/s, "
                f"{marginal / cpus:5.1f} per CPU"
            )
    largest = sizes[-1]
    print(f"ratio={rate['beam', largest] / rate['local', largest]:.2f}")


if __name__ == "__main__":
    app.run(main)
