"""Builder throughput against the tfds btgraham-300 preprocessing applied serially.

Both process the same large synthetic JPEGs of EyePACS size (3000 x 2000, the disc 2000 px
across) with the same Ben Graham procedure: tfds decodes each file in full, processes it and
encodes JPEG quality 72, one after another (its builder runs in one process); ours is
``tfrecord_builder`` with ``--preprocess=btgraham --image_size=540`` (radius 300) and
``--workers=N``, writing sharded TFRecords. Timed in alternating rounds in one run.

    python benchmarks/builder_throughput.py --num_images=40 --workers=2

The last line is ``ratio=<ours / tfds serial, images/s> ...``.
"""

import os
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks.tfds_btgraham import process_file  # noqa: E402
from effdr_tf.data import builder, synthetic  # noqa: E402
from effdr_tf.data.sources import make_source  # noqa: E402

_NUM_IMAGES = flags.DEFINE_integer("num_images", 100, "Photographs to process per round.")
_WORKERS = flags.DEFINE_integer("workers", 2, "Our builder's worker processes.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds.")


def make_eyepacs_like(folder: str, n: int) -> None:
    """Synthetic fundus photographs at EyePACS size: 3000 x 2000, JPEG quality 95."""
    os.makedirs(os.path.join(folder, "images"))
    rows = ["path,label"]
    for i in range(n):
        grade = i % 5
        image, _ = synthetic.generate(grade, i, seed=1, size=1411)
        image = cv2.resize(image, (2000, 2000), interpolation=cv2.INTER_CUBIC)
        image = cv2.copyMakeBorder(image, 0, 0, 500, 500, cv2.BORDER_CONSTANT, value=0)
        name = f"images/{i:04d}.jpeg"
        cv2.imwrite(os.path.join(folder, name), image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        rows.append(f"{name},{grade}")
    with open(os.path.join(folder, "labels.csv"), "w") as f:
        f.write("\n".join(rows) + "\n")


def _worker_peak_mb(records) -> float:
    """Runs the builder's worker function over ``records``; returns this process's VmHWM.

    VmHWM (peak resident memory of the current address space) is reset by exec, unlike
    ru_maxrss, which would count the parent's memory at fork time.
    """
    for record in records:
        builder._process(record)
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def worker_peak_memory(folder: str) -> float:
    import concurrent.futures
    import multiprocessing

    source = make_source("csv", folder)
    options = builder.BuildOptions(image_size=540, preprocess="btgraham", val_fraction=0.0)
    with concurrent.futures.ProcessPoolExecutor(
        1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=builder._init_worker,
        initargs=(source, options),
    ) as pool:
        return pool.submit(_worker_peak_mb, list(source.scan())).result()


def tfds_serial(folder: str, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        process_file(os.path.join(folder, f"images/{i:04d}.jpeg"))
    return n / (time.perf_counter() - start)


def ours(folder: str, out: str, n: int, workers: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    options = builder.BuildOptions(image_size=540, preprocess="btgraham", val_fraction=0.0)
    start = time.perf_counter()
    manifest = builder.build(
        make_source("csv", folder), out, options, workers=workers, progress=False
    )
    elapsed = time.perf_counter() - start
    assert manifest["num_written"] == n, manifest["num_rejected"]
    return n / elapsed


def main(argv):
    del argv
    # TensorFlow (which tfds needs too) is loaded before timing; it is imported here, not at
    # the top, because worker processes re-import this module.
    import tensorflow  # noqa: F401

    n = _NUM_IMAGES.value
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "raw")
        make_eyepacs_like(data, n)
        size_mb = (
            sum(
                os.path.getsize(os.path.join(data, "images", f))
                for f in os.listdir(os.path.join(data, "images"))
            )
            / n
            / 1e6
        )
        print(
            f"{n} synthetic photographs, 3000x2000 JPEG q95, {size_mb:.1f} MB each; "
            f"{os.cpu_count()} CPUs"
        )
        tfds_serial(data, min(n, 4))  # warm the page cache and OpenCV
        rates = {"tfds": [], "ours": []}
        for _ in range(_ROUNDS.value):
            rates["tfds"].append(tfds_serial(data, n))
            rates["ours"].append(ours(data, os.path.join(tmp, "out"), n, _WORKERS.value))
        worker_peak_mb = worker_peak_memory(data)
    theirs, mine = statistics.median(rates["tfds"]), statistics.median(rates["ours"])
    print(f"tfds btgraham-300, serial:          {theirs:6.1f} images/s  {rates['tfds']}")
    print(
        f"ours, --workers={_WORKERS.value} (incl. writing): {mine:6.1f} images/s  {rates['ours']}"
    )
    print(f"peak memory per worker process: {worker_peak_mb:.0f} MB")
    print(
        f"ratio={mine / theirs:.2f} ours (--workers={_WORKERS.value}) / tfds btgraham-300 serial, "
        f"images/s at 3000x2000"
    )


if __name__ == "__main__":
    app.run(main)
