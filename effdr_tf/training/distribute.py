"""One factory for the tf.distribute strategies train.py offers."""

from __future__ import annotations

import json
import os

import tensorflow as tf

from effdr_tf.errors import EffdrError

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def make_strategy(name: str, tpu: str | None = None) -> tf.distribute.Strategy:
    """``default`` (CPU or one GPU), ``mirrored`` (all local GPUs, or CPUs when none),
    ``multi_worker`` (TF_CONFIG), ``tpu`` (``--tpu`` name, ``local`` on a TPU VM)."""
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
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, tf.errors.OpError, RuntimeError) as e:
            where = f"--tpu={tpu}" if tpu else "the local TPU (give --tpu=NAME elsewhere)"
            raise EffdrError(f"cannot reach {where}: {str(e).splitlines()[0]}") from e
        return tf.distribute.TPUStrategy(resolver)
    raise EffdrError(f"--strategy={name}: choose one of {', '.join(STRATEGIES)}")


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
