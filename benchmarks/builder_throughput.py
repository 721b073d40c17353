"""Builder throughput against the tfds btgraham-300 preprocessing applied serially.

Both process the same large synthetic JPEGs of EyePACS size (3000 x 2000, the disc 2000 px
across) with the same Ben Graham procedure: tfds decodes each file in full, processes it and
encodes JPEG quality 72, one after another (its builder runs in one process); ours is
``tfrecord_builder`` with ``--preprocess=btgraham --image_size=540`` (radius 300) and
``--workers=N``, writing sharded TFRecords. Timed in alternating rounds in one run.

    python benchmarks/builder_throughput.py --num_images=40 --workers=2

The last line is ``ratio=<ours / tfds serial, images/s> ...``.

``--compare=beam`` times the same build on Apache Beam instead (``--runner=beam`` on the
local runner, FnApiRunner, with ``--workers`` processes, ``multi_processing``) against the local
builder with as many workers, and samples the peak resident memory (VmHWM) of every worker
process each of them starts, and of this process:

    python benchmarks/builder_throughput.py --compare=beam --num_images=200 --workers=2

Its last line is ``ratio=<Beam / local, images/s> ...``.
"""

import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks.tfds_btgraham import process_file  # noqa: E402
from effdr_tf.data import builder, synthetic  # noqa: E402
from effdr_tf.data.sources import make_source  # noqa: E402
from tests.memory import process_tree, vm_hwm_kib  # noqa: E402

_NUM_IMAGES = flags.DEFINE_integer("num_images", 100, "Photographs to process per round.")
_WORKERS = flags.DEFINE_integer("workers", 2, "Our builder's worker processes.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds.")
_COMPARE = flags.DEFINE_enum(
    "compare",
    "tfds",
    ["tfds", "beam"],
    "tfds: ours against the tfds preprocessing run serially; beam: --runner=beam (the "
    "DirectRunner, --workers processes) against --runner=local with as many workers.",
)


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


def ours(folder: str, out: str, n: int, workers: int, runner: str = "local") -> float:
    shutil.rmtree(out, ignore_errors=True)
    options = builder.BuildOptions(image_size=540, preprocess="btgraham", val_fraction=0.0)
    beam_options = None
    if runner == "beam":
        from effdr_tf.beam_options import pipeline_options

        # No --runner: Beam's local runner (FnApiRunner) with `workers` processes.
        beam_options = pipeline_options("", workers=workers)
    start = time.perf_counter()
    manifest = builder.build(
        make_source("csv", folder),
        out,
        options,
        workers=workers,
        progress=False,
        runner=runner,
        beam_options=beam_options,
    )
    elapsed = time.perf_counter() - start
    assert manifest["num_written"] == n, manifest["num_rejected"]
    return n / elapsed


def _command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:  # the process has just exited
        return ""


class PeakMemory:
    """Peak resident memory (VmHWM, MB) of this process and of each worker it starts.

    VmHWM is the process's own high-water mark (unlike ru_maxrss, which a child inherits at
    fork). The workers' peaks are sampled every 20 ms while they live, so a process that
    exits less than that after its peak may be under-read; this process's own is reset at
    the start (``/proc/self/clear_refs``) and read at the end. Workers: the local builder's
    spawned pool processes, the FnApiRunner's SDK harness processes; neither multiprocessing's
    resource tracker nor the shell that starts each harness is a worker.
    """

    def __enter__(self):
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current resident size
        except OSError:
            pass
        self.workers: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.02):
            for pid in process_tree(os.getpid())[1:]:
                command = _command_line(pid)
                if not command or "resource_tracker" in command or command.startswith("/bin/sh "):
                    continue
                self.workers[pid] = max(self.workers.get(pid, 0), vm_hwm_kib(pid))

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.main_mb = vm_hwm_kib("self") / 1024
        peaks = [kib / 1024 for kib in self.workers.values() if kib]
        self.worker_max_mb = max(peaks, default=0.0)
        self.worker_count = len(peaks)


def compare_beam(data: str, tmp: str, n: int, workers: int, rounds: int) -> None:
    """--runner=beam against --runner=local on the same photographs, in alternating rounds."""
    rates = {"local": [], "beam": []}
    memory = {}
    for _ in range(rounds):
        for runner in ("local", "beam"):
            with PeakMemory() as peak:
                rates[runner].append(ours(data, os.path.join(tmp, runner), n, workers, runner))
            memory[runner] = peak  # the last round's: the same work every round
    local, beam = statistics.median(rates["local"]), statistics.median(rates["beam"])
    for runner, rate in (("local", local), ("beam", beam)):
        peak = memory[runner]
        label = {
            "local": f"local builder, --workers={workers}:",
            "beam": f"Beam FnApiRunner, {workers} processes:",
        }[runner]
        print(f"{label:<38} {rate:6.1f} images/s  {[round(r, 1) for r in rates[runner]]}")
        print(
            f"  peak memory: {peak.worker_max_mb:.0f} MB per worker (largest of "
            f"{peak.worker_count} worker processes), {peak.main_mb:.0f} MB main process"
        )
    print(
        f"ratio={beam / local:.2f} --runner=beam (FnApiRunner, {workers} processes) / "
        f"--runner=local (--workers={workers}), images/s at 3000x2000, {n} images a build"
    )


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
        if _COMPARE.value == "beam":
            compare_beam(data, tmp, n, _WORKERS.value, _ROUNDS.value)
            return
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
