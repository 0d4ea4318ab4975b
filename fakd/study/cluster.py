"""Connecting to Ray: a local runtime with the machine's resources, or an existing cluster."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import ray

from fakd.errors import UserError

# Passed to every Ray worker so trials see the same offline settings as the driver.
FORWARDED_ENV = ("HF_HUB_OFFLINE", "WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR", "WANDB_SILENT")


def local_gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def check_local_resources(cpu: float, gpu: float, file: str) -> None:
    """Before a local Ray starts: can this machine run one trial at all?"""
    if gpu > 0 and local_gpu_count() == 0:
        raise UserError(f"each trial asks for {gpu} GPU but this machine has none; set resources.gpu: 0 "
                        "or pass --address of a cluster with GPUs", file=file, key="resources.gpu")
    cores = os.cpu_count() or 1
    if cpu > cores:
        raise UserError(f"each trial asks for {cpu} CPUs but this machine has {cores}", file=file,
                        key="resources.cpu")


def check_cluster_resources(cpu: float, gpu: float, file: str) -> None:
    """After connecting to a cluster: does one node offer what one trial asks for?"""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if not any(n.get("CPU", 0) >= cpu and n.get("GPU", 0) >= gpu for n in nodes):
        most_gpu = max((n.get("GPU", 0) for n in nodes), default=0)
        most_cpu = max((n.get("CPU", 0) for n in nodes), default=0)
        key = "resources.gpu" if gpu > most_gpu else "resources.cpu"
        raise UserError(f"no node of the cluster offers {cpu} CPU and {gpu} GPU per trial (largest node: "
                        f"{most_cpu} CPU, {most_gpu} GPU)", file=file, key=key)


# Tune's own console output is replaced by the study's one-line progress messages.
QUIET_TUNE = {
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "0",
    "RAY_DEDUP_LOGS": "1",
    "TUNE_WARN_THRESHOLD_S": "10",  # W&B opens a run on a trial's first result: a second, not a bottleneck
}


@contextlib.contextmanager
def ray_runtime(address: str | None) -> Iterator[None]:
    """Use a running Ray (tests, notebooks), connect to `address`, or start a new local one ("local": never a
    cluster left behind by an earlier `ray start`); stop what we start."""
    for name, value in QUIET_TUNE.items():
        os.environ.setdefault(name, value)
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    logging.getLogger("optuna").setLevel(logging.WARNING)
    if ray.is_initialized():
        yield
        return
    env = {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}
    try:
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=True,
                 runtime_env={"env_vars": env} if env else None)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UserError(f"cannot connect to Ray at {address}: {exc}", key="--address") from None
    try:
        yield
    finally:
        ray.shutdown()
