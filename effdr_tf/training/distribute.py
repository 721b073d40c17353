"""One factory for the tf.distribute strategies train.py offers."""

from __future__ import annotations

import dataclasses
import json
import os

import tensorflow as tf

from effdr_tf.errors import EffdrError
from effdr_tf.training.options import STRATEGIES, check_tpu_paths


def make_strategy(
    name: str,
    tpu: str | None = None,
    *,
    model_dir: str | None = None,
    data_dir: str | None = None,
) -> tf.distribute.Strategy:
    """Makes the strategy ``--strategy=name`` asks for.

    Args:
        name: ``default`` (CPU or one GPU), ``mirrored`` (all local GPUs, or CPUs when none),
            ``multi_worker`` (TF_CONFIG) or ``tpu``.
        tpu: for ``tpu``, a TPU node's name or ``grpc://`` address; ``None``: the TPU of this
            TPU VM, resolved as ``"local"``.
        model_dir: the run's folder; given, a TPU node is refused a local one before it is
            connected to (``check_tpu_paths``).
        data_dir: the shards' folder, checked as ``model_dir``.

    Raises:
        EffdrError: an unknown name, an unusable TF_CONFIG, local paths for a TPU node, or a
            TPU that cannot be reached.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        check_tf_config(os.environ.get("TF_CONFIG"))
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        check_tpu_paths(tpu, model_dir, data_dir)
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


_TF_CONFIG_FORM = '{"cluster": {"worker": [...]}, "task": {"type": "worker", "index": i}}'


def check_tf_config(raw: str | None) -> dict:
    """The parsed TF_CONFIG of a multi-worker run, or one line saying what is wrong with it.

    A worker's index must name one of ``cluster["worker"]``; a chief is task 0 of a
    ``cluster["chief"]`` of one address. TensorFlow checks the same when the strategy is made
    (tensorflow/python/distribute/multi_worker_util.py ``_validate_cluster_spec``), as a
    ValueError traceback after it has started; this says it in one line, before.

    Raises:
        EffdrError: TF_CONFIG unset, not JSON, or its task not in its cluster.
    """
    if not raw:
        raise EffdrError("--strategy=multi_worker needs TF_CONFIG (cluster and task) set")
    try:
        config = json.loads(raw)
        cluster, task = config["cluster"], config["task"]
        kind, index = task["type"], task["index"]
        workers, chiefs = cluster.get("worker", []), cluster.get("chief", [])
    except KeyError as e:
        raise EffdrError(
            f"TF_CONFIG is not valid for multi-worker training (no {e.args[0]!r} entry): need "
            f"{_TF_CONFIG_FORM}"
        ) from e
    except (ValueError, TypeError, AttributeError) as e:
        raise EffdrError(
            f"TF_CONFIG is not valid for multi-worker training ({str(e).splitlines()[0]}): need "
            f"{_TF_CONFIG_FORM}"
        ) from e
    if kind not in ("worker", "chief"):
        problem = f"task type {kind!r}: choose worker or chief"
    elif not isinstance(index, int) or isinstance(index, bool):
        problem = f"task index {index!r} is not a whole number"
    elif not isinstance(workers, list) or not isinstance(chiefs, list):
        problem = "cluster.worker and cluster.chief must be lists of host:port addresses"
    elif kind == "worker" and not 0 <= index < len(workers):
        span = f" (0 to {len(workers) - 1})" if workers else ""
        problem = f"worker index {index} is not one of the {len(workers)} in cluster.worker{span}"
    elif kind == "chief" and len(chiefs) != 1:
        problem = f"a chief task needs cluster.chief with one address (it has {len(chiefs)})"
    elif kind == "chief" and index != 0:
        problem = f"chief index {index}: the one chief is index 0"
    else:
        return config
    raise EffdrError(f"TF_CONFIG is not valid for multi-worker training: {problem}")


def num_workers(strategy) -> int:
    """Machines taking part (workers and chief); 1 outside MultiWorkerMirroredStrategy."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or isinstance(strategy, tf.distribute.TPUStrategy):
        return 1
    cluster = resolver.cluster_spec().as_dict()
    return max(1, len(cluster.get("worker", [])) + len(cluster.get("chief", [])))


# Where a run's replicas are: one device, several devices of one machine, several machines.
ONE_DEVICE, ONE_MACHINE, MACHINES = "one device", "one machine", "several machines"


@dataclasses.dataclass(frozen=True)
class Defaults:
    """What unset settings become on one kind of device and spread of replicas.

    Attributes:
        jit_compile: ``train.jit_compile`` unset.
        steps_per_execution: ``train.steps_per_execution=0``.
        sync_batch_norm: ``model.sync_batch_norm`` unset.
        jit_refused: why ``train.jit_compile=True`` cannot run there; empty where it can.
    """

    jit_compile: bool
    steps_per_execution: int
    sync_batch_norm: bool
    jit_refused: str = ""


# Steps per host call on TPUs: the host loop runs this many steps in one tf.function so the
# TPU never waits on Python between steps. tensorflow/tpu efficientnet main.py runs 1251 steps
# per loop (iterations_per_loop); 100 keeps progress, logging and checkpoints frequent.
TPU_STEPS_PER_EXECUTION = 100

# Several replicas on CPU devices cannot run a compiled step: the replica step's
# synchronisation points (all-reduces, per-device updates) need merge_call on CPUs, which
# TensorFlow refuses inside a nested compiled function; on GPUs it does not need one.
_CPU_REPLICAS = (
    "with several replicas needs GPUs (or a TPU, which compiles the step anyway); on CPU "
    "devices leave it unset"
)
# A compiled step's all-reduce is an XLA collective. TensorFlow's XLA launch
# (tensorflow/compiler/tf2xla/xla_helpers.cc ResolveDeviceAssignment) hands XLA the device
# assignment but no NCCL clique-id callback, and XLA's GPU collectives refuse participants in
# other processes without one ("If non-local devices are taking part of a collective API on
# GPU, the clique_id_callback must be provided by the client", xla nccl_collectives.cc); only
# PJRT's GPU client (JAX) sets it. Reported as tensorflow/tensorflow#58787 (jit_compile=True
# on several nodes of GPUs) and #62757 (NCCL and XLA under MultiWorkerMirroredStrategy).
_ACROSS_MACHINES = (
    "across several machines: a compiled step cannot all-reduce between machines (TensorFlow "
    "gives XLA's GPU collectives no NCCL clique id for other machines' devices, "
    "tensorflow/tensorflow#58787); leave it unset"
)

# The per-device defaults (docs/training.md, their table). XLA: on GPUs; off on CPU, where it
# runs EfficientNet about 6x slower than plain TensorFlow (benchmarks/); off across machines
# (above; Keras' own "auto" goes further and is off under any tf.distribute strategy, though it
# passes an explicit True through: Keras 3.15 keras/src/trainers/trainer.py,
# Trainer._resolve_auto_jit_compile, "Disable XLA with tf.distribute"); on TPUs the whole
# replicated step is an XLA program anyway, so no nested XLA function is made. Batch statistics
# over replicas: where several replicas share one host's interconnect (a TPU, mirrored GPUs);
# across machines its three small all-reduces per batch-norm layer per pass (B5: 116 layers) go
# over the network.
PER_DEVICE_DEFAULTS = {
    ("cpu", ONE_DEVICE): Defaults(False, 1, False),
    ("cpu", ONE_MACHINE): Defaults(False, 1, True, _CPU_REPLICAS),
    ("cpu", MACHINES): Defaults(False, 1, False, _ACROSS_MACHINES),
    ("gpu", ONE_DEVICE): Defaults(True, 1, False),
    ("gpu", ONE_MACHINE): Defaults(True, 1, True),
    ("gpu", MACHINES): Defaults(False, 1, False, _ACROSS_MACHINES),
    ("tpu", ONE_DEVICE): Defaults(False, TPU_STEPS_PER_EXECUTION, False),
    ("tpu", ONE_MACHINE): Defaults(False, TPU_STEPS_PER_EXECUTION, True),
}


def placement(strategy) -> tuple[str, str]:
    """(device kind, spread): ``cpu``, ``gpu`` or ``tpu``, and ``ONE_DEVICE``,
    ``ONE_MACHINE`` or ``MACHINES``. A TPUStrategy counts as one machine whatever its hosts:
    its replicas share the TPU interconnect."""
    if isinstance(strategy, tf.distribute.TPUStrategy):
        device = "tpu"
    else:
        device = "gpu" if tf.config.list_logical_devices("GPU") else "cpu"
    if strategy is None or strategy.num_replicas_in_sync < 2:
        return device, ONE_DEVICE
    return device, MACHINES if num_workers(strategy) > 1 else ONE_MACHINE


def per_device_defaults(strategy) -> Defaults:
    """The row of ``PER_DEVICE_DEFAULTS`` for where ``strategy`` runs."""
    return PER_DEVICE_DEFAULTS[placement(strategy)]


def sync_batch_norm(setting, strategy) -> bool:
    """Batch statistics over all replicas? ``None`` (auto): ``PER_DEVICE_DEFAULTS``."""
    if setting is not None:
        return bool(setting)
    return per_device_defaults(strategy).sync_batch_norm


def jit_compile(setting, strategy) -> bool:
    """XLA for the replica step? ``None`` (auto): ``PER_DEVICE_DEFAULTS``; never on TPUs, where
    the step is compiled whole anyway.

    Raises:
        EffdrError: ``True`` where the compiled step cannot run (several CPU replicas, several
            machines).
    """
    device, spread = placement(strategy)
    defaults = PER_DEVICE_DEFAULTS[device, spread]
    if device == "tpu" or setting is None:
        return defaults.jit_compile
    if setting and defaults.jit_refused:
        raise EffdrError(f"train.jit_compile=True {defaults.jit_refused}")
    return bool(setting)


def steps_per_execution(setting: int, strategy) -> int:
    """Steps per call of the training function; 0 (auto): ``PER_DEVICE_DEFAULTS``."""
    if int(setting) > 0:
        return int(setting)
    return per_device_defaults(strategy).steps_per_execution


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
