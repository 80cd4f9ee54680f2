"""Pick the tf.distribute strategy; the training loop is the same under all of them.

`default` is one device.  `mirrored` keeps a copy of every variable on each local device and
all-reduces gradients.  `central_storage` (the original `train_multigpu.py`'s choice) keeps variables on
the CPU and runs one model copy per GPU.  `multi_worker` is TensorFlow's own multi-machine engine,
configured by `TF_CONFIG` or by `--worker-hosts`/`--task-index`, which build it.

Devices must be chosen before TensorFlow initialises its runtime, so `configure_devices` runs first;
without a GPU, `cpu_replicas` splits the CPU into logical devices so multi-replica runs can be tried
and tested on any machine.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from face_recognition_tf.errors import ConfigError

STRATEGIES = ("default", "mirrored", "central_storage", "multi_worker")


@dataclass
class StrategyInfo:
    strategy: object
    name: str
    num_replicas: int
    num_workers: int
    is_chief: bool
    worker_index: int
    devices: tuple


def build_tf_config(worker_hosts: list[str], task_index: int) -> dict:
    """The TF_CONFIG of worker `task_index` in a cluster of `worker_hosts` (worker 0 is the chief)."""
    if not worker_hosts:
        raise ConfigError("--worker-hosts: give at least one host:port")
    for host in worker_hosts:
        if ":" not in host:
            raise ConfigError(f"--worker-hosts: {host!r} is not host:port")
    if task_index is None or not 0 <= task_index < len(worker_hosts):
        raise ConfigError(f"--task-index must be in 0..{len(worker_hosts) - 1} for {len(worker_hosts)} worker hosts")
    return {"cluster": {"worker": list(worker_hosts)}, "task": {"type": "worker", "index": int(task_index)}}


def configure_devices(devices: list[int] | None = None, cpu_replicas: int | None = None) -> None:
    """Restrict visible GPUs and/or split the CPU into `cpu_replicas` logical devices.

    If TensorFlow is already initialised (as in a test session that split the CPU itself) the current
    layout is accepted when it already offers enough devices.
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if devices:
        if not gpus:
            raise ConfigError(f"--devices {','.join(map(str, devices))}: no GPU is visible on this machine")
        bad = [d for d in devices if not 0 <= d < len(gpus)]
        if bad:
            raise ConfigError(f"--devices: GPU index {bad[0]} does not exist ({len(gpus)} GPU(s) visible)")
        try:
            tf.config.set_visible_devices([gpus[d] for d in devices], "GPU")
        except RuntimeError:
            visible = tf.config.get_visible_devices("GPU")
            if len(visible) != len(devices):
                raise ConfigError("--devices: TensorFlow was initialised before the devices could be chosen") from None
    if cpu_replicas and cpu_replicas > 1:
        cpus = tf.config.list_physical_devices("CPU")
        current = tf.config.get_logical_device_configuration(cpus[0]) or []
        if len(current) >= cpu_replicas:
            return
        try:
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(cpu_replicas)]
            )
        except RuntimeError:
            have = len(tf.config.list_logical_devices("CPU"))
            if have < cpu_replicas:
                raise ConfigError(
                    f"--cpu-replicas {cpu_replicas}: TensorFlow already started with {have} CPU device(s)"
                ) from None


def _compute_devices(cpu_replicas: int | None) -> list[str]:
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return [d.name for d in gpus]
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    if cpu_replicas:
        if len(cpus) < cpu_replicas:
            raise ConfigError(f"--cpu-replicas {cpu_replicas}: only {len(cpus)} logical CPU device(s) exist")
        return cpus[:cpu_replicas]
    return cpus


def make_strategy(
    name: str = "default",
    *,
    devices: list[int] | None = None,
    cpu_replicas: int | None = None,
    worker_hosts: list[str] | None = None,
    task_index: int | None = None,
) -> StrategyInfo:
    """Build the strategy; must run before any other TensorFlow work in the process."""
    if name not in STRATEGIES:
        raise ConfigError(f"--strategy {name!r}: choose one of {', '.join(STRATEGIES)}")
    if worker_hosts and name != "multi_worker":
        raise ConfigError("--worker-hosts only applies to --strategy multi_worker")
    if name == "multi_worker":
        if worker_hosts:
            os.environ["TF_CONFIG"] = json.dumps(build_tf_config(worker_hosts, task_index))
        elif "TF_CONFIG" not in os.environ:
            raise ConfigError("--strategy multi_worker needs TF_CONFIG or --worker-hosts/--task-index")
        try:
            json.loads(os.environ["TF_CONFIG"])
        except json.JSONDecodeError as exc:
            raise ConfigError(f"TF_CONFIG is not valid JSON ({exc})") from None
    configure_devices(devices, cpu_replicas)

    import tensorflow as tf

    if name == "default":
        strategy = tf.distribute.get_strategy()
        compute = tuple(_compute_devices(None)[:1])
    elif name == "mirrored":
        compute = tuple(_compute_devices(cpu_replicas))
        # A second MirroredStrategy in one process (train, then fine-tune in a notebook) would reuse the
        # first one's collective keys and abort; TF's own tests move the key base on like this.
        tf.distribute.MirroredStrategy._collective_key_base += 100000
        strategy = tf.distribute.MirroredStrategy(devices=list(compute))
    elif name == "central_storage":
        compute = tuple(_compute_devices(cpu_replicas))
        strategy = tf.distribute.experimental.CentralStorageStrategy(
            compute_devices=list(compute), parameter_device="/cpu:0"
        )
    else:
        try:
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as exc:  # "Collective ops must be configured at program startup"
            raise ConfigError(
                "--strategy multi_worker must be created before TensorFlow runs anything in the process "
                f"({exc}); call make_strategy('multi_worker') first"
            ) from None
        compute = tuple(strategy.extended.worker_devices)
    chief, worker_index, workers = _chief_of(strategy, name)
    return StrategyInfo(
        strategy=strategy,
        name=name,
        num_replicas=int(strategy.num_replicas_in_sync),
        num_workers=workers,
        is_chief=chief,
        worker_index=worker_index,
        devices=compute,
    )


def _chief_of(strategy, name: str) -> tuple[bool, int, int]:
    """(is this process the chief, its worker index, number of workers)."""
    if name != "multi_worker":
        return True, 0, 1
    resolver = strategy.cluster_resolver
    task_type, task_id = resolver.task_type, resolver.task_id or 0
    spec = resolver.cluster_spec().as_dict()
    workers = len(spec.get("worker", [])) + len(spec.get("chief", []))
    if task_type == "chief" or task_type is None:
        return True, 0, max(workers, 1)
    index = task_id + (1 if "chief" in spec else 0)
    return task_type == "worker" and index == 0, index, max(workers, 1)


def gather_from_workers(info: StrategyInfo, value: int) -> list[int]:
    """`value` as seen by every worker, in worker order (one entry per worker).

    A collective: every worker must call it at the same point, or the others wait for it.  Used to
    check that all workers agree on something (e.g. the checkpoint they resume from) before their
    step counts could drift apart, which would leave one of them waiting in an all-reduce forever.
    """
    if info.name != "multi_worker" or info.num_workers <= 1:
        return [int(value)]
    import tensorflow as tf

    strategy = info.strategy
    values = strategy.experimental_distribute_values_from_function(lambda ctx: tf.constant([int(value)], tf.int64))
    per_replica = [int(v) for v in strategy.gather(values, axis=0).numpy()]
    per_worker = max(1, len(per_replica) // info.num_workers)  # replicas are ordered by worker
    return per_replica[::per_worker]
