"""One factory for the tf.distribute strategies train.py offers."""

from __future__ import annotations

import json
import os

import tensorflow as tf

from effdr_tf.errors import EffdrError
from effdr_tf.training.options import STRATEGIES


def make_strategy(name: str, tpu: str | None = None) -> tf.distribute.Strategy:
    """``default`` (CPU or one GPU), ``mirrored`` (all local GPUs, or CPUs when none),
    ``multi_worker`` (TF_CONFIG), ``tpu`` (``tpu``: a TPU node's name or address; ``None``:
    the TPU of this TPU VM, resolved as ``"local"``)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        raw = os.environ.get("TF_CONFIG")
        if not raw:
            raise EffdrError("--strategy=multi_worker needs TF_CONFIG (cluster and task) set")
        try:
            config = json.loads(raw)
            workers = config["cluster"]["worker"]
            task = config["task"]
            if task["type"] not in ("worker", "chief") or task["index"] >= len(workers) + 1:
                raise KeyError("task")
        except (ValueError, KeyError, TypeError) as e:
            raise EffdrError(
                f"TF_CONFIG is not valid for multi-worker training ({e}): need "
                '{"cluster": {"worker": [...]}, "task": {"type": "worker", "index": i}}'
            ) from e
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        try:
            # "local": the TPU attached to this VM (TPU VMs); a name or grpc:// address: a
            # remote TPU node. TPUClusterResolver(tpu="") asks for a name on TPU VMs.
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "local")
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, tf.errors.OpError, RuntimeError) as e:
            where = f"--tpu={tpu}" if tpu else "the local TPU (give --tpu=NAME elsewhere)"
            raise EffdrError(f"cannot reach {where}: {str(e).splitlines()[0]}") from e
        return tf.distribute.TPUStrategy(resolver)
    raise EffdrError(f"--strategy={name}: choose one of {', '.join(STRATEGIES)}")


def num_workers(strategy) -> int:
    """Machines taking part (workers and chief); 1 outside MultiWorkerMirroredStrategy."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or isinstance(strategy, tf.distribute.TPUStrategy):
        return 1
    cluster = resolver.cluster_spec().as_dict()
    return max(1, len(cluster.get("worker", [])) + len(cluster.get("chief", [])))


def sync_batch_norm(setting, strategy) -> bool:
    """Batch statistics over all replicas? ``None`` (auto): on one host with several replicas
    (a TPU, or MirroredStrategy over GPUs), where the all-reduces stay on the host's
    interconnect; off across machines (MultiWorkerMirroredStrategy), where three small
    all-reduces per batch-norm layer per pass (B5: 116 layers) go over the network."""
    if setting is not None:
        return bool(setting)
    if strategy is None or strategy.num_replicas_in_sync < 2:
        return False
    return num_workers(strategy) < 2


def jit_compile(setting, strategy) -> bool:
    """XLA for the replica step? ``None`` (auto): on GPUs; off on CPU, where XLA runs
    EfficientNet about 6x slower than plain TensorFlow (benchmarks/). On TPUs the whole
    replicated step is an XLA program anyway, so no nested XLA function is made there.

    Several replicas on CPU devices cannot run a compiled step: the replica step's
    synchronisation points (all-reduces, per-device updates) need ``merge_call`` on CPUs, which
    TensorFlow refuses inside a nested compiled function; on GPUs it does not need one.
    """
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return False
    gpus = bool(tf.config.list_logical_devices("GPU"))
    on = gpus if setting is None else bool(setting)
    if on and strategy.num_replicas_in_sync > 1 and not gpus:
        raise EffdrError(
            "train.jit_compile=True with several replicas needs GPUs (or a TPU, which compiles "
            "the step anyway); on CPU devices leave it unset"
        )
    return on


# Steps per host call on TPUs: the host loop runs this many steps in one tf.function so the
# TPU never waits on Python between steps. tensorflow/tpu efficientnet main.py runs 1251 steps
# per loop (iterations_per_loop); 100 keeps progress, logging and checkpoints frequent.
TPU_STEPS_PER_EXECUTION = 100


def steps_per_execution(setting: int, strategy) -> int:
    """Steps per call of the training function; 0 (auto): 100 on TPUs, 1 elsewhere."""
    if int(setting) > 0:
        return int(setting)
    return TPU_STEPS_PER_EXECUTION if isinstance(strategy, tf.distribute.TPUStrategy) else 1


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Only the chief writes checkpoints, summaries and exports."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or isinstance(strategy, tf.distribute.TPUStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type is None:
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "chief" or (not has_chief and task_type == "worker" and task_id == 0)


def worker_id(strategy) -> int:
    resolver = getattr(strategy, "cluster_resolver", None)
    return int(getattr(resolver, "task_id", 0) or 0) if resolver is not None else 0
