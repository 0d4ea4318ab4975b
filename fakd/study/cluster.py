"""Connecting to Ray: a local runtime with the machine's resources, or an existing cluster."""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator

import ray

from fakd.errors import UserError
from fakd.supervisor import note_ray_runtime

# Passed to every Ray worker so trials see the same offline settings as the driver.
FORWARDED_ENV = ("HF_HUB_OFFLINE", "WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR", "WANDB_SILENT")


def local_gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def check_local_resources(cpu: float, gpu: float, file: str, workers: int = 1) -> None:
    """Before a local Ray starts: can this machine run one trial at all (all `workers` processes of it, each of
    `cpu` CPUs and `gpu` GPUs, at once)?"""
    gpus = local_gpu_count() if gpu > 0 else 0
    if gpu > 0 and gpus == 0:
        raise UserError(f"each trial asks for {gpu} GPU but this machine has none; set resources.gpu: 0 "
                        "or pass --address of a cluster with GPUs", file=file, key="resources.gpu")
    cores = os.cpu_count() or 1
    if cpu > cores:
        raise UserError(f"each trial asks for {cpu} CPUs but this machine has {cores}", file=file,
                        key="resources.cpu")
    if workers > 1 and gpu > 0 and _count(gpus, gpu) < workers:
        raise UserError(f"{workers} workers of {gpu} GPU each need {workers * gpu:g} GPUs but this machine has "
                        f"{gpus}; lower resources.workers or pass --address of a cluster", file=file,
                        key="resources.workers")
    if workers > 1 and _count(cores, cpu) < workers:
        raise UserError(f"{workers} workers of {cpu} CPUs each need {workers * cpu:g} CPUs but this machine has "
                        f"{cores}; lower resources.workers or resources.cpu, or pass --address of a cluster",
                        file=file, key="resources.workers")


def largest_node_cpus() -> float:
    """The CPUs of the largest alive node (a task that runs alone can use a whole node)."""
    return max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=1.0)


def check_cluster_resources(cpu: float, gpu: float, file: str, workers: int = 1) -> None:
    """After connecting to a cluster: does one node offer what one trial asks for, and with `workers` > 1, do the
    alive nodes together hold that many workers of `cpu` CPUs and `gpu` GPUs each at once?"""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if not any(n.get("CPU", 0) >= cpu and n.get("GPU", 0) >= gpu for n in nodes):
        most_gpu = max((n.get("GPU", 0) for n in nodes), default=0)
        most_cpu = max((n.get("CPU", 0) for n in nodes), default=0)
        key = "resources.gpu" if gpu > most_gpu else "resources.cpu"
        per = "per worker" if workers > 1 else "per trial"
        raise UserError(f"no node of the cluster offers {cpu} CPU and {gpu} GPU {per} (largest node: "
                        f"{most_cpu} CPU, {most_gpu} GPU)", file=file, key=key)
    if workers > 1:
        fits = [_fits(node, cpu, gpu) for node in nodes]
        if sum(fits) < workers:
            gpus = sum(n.get("GPU", 0) for n in nodes)
            raise UserError(f"{workers} workers of {cpu} CPU and {gpu} GPU each do not fit the cluster: its "
                            f"{len(nodes)} nodes ({gpus:g} GPUs) hold at most {sum(fits)} such workers", file=file,
                            key="resources.workers")


def _count(available: float, each: float) -> int:
    """How many requests of `each` fit in `available` (Ray counts resources in units of 1e-4)."""
    return int(math.floor(available / each + 1e-6))


def _fits(node: dict[str, float], cpu: float, gpu: float) -> int:
    """How many workers of `cpu` CPUs and `gpu` GPUs one node holds."""
    count = _count(node.get("CPU", 0), cpu)
    return min(count, _count(node.get("GPU", 0), gpu)) if gpu > 0 else count


class _SecureDefaultNotice(logging.Filter):
    """Drops Ray's start-up notice that token authentication is on (the secure default, nothing to act on); its
    warning that authentication is off stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled")


AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


@contextlib.contextmanager
def ray_runtime(address: str | None) -> Iterator[None]:
    """Use a running Ray (tests, notebooks), connect to `address`, or start a new local one ("local": never a
    cluster left behind by an earlier `ray start`); stop what we start."""
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    logging.getLogger("optuna").setLevel(logging.WARNING)
    if ray.is_initialized():
        yield
        return
    env = {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}
    notice = logging.getLogger(AUTH_LOGGER)
    if not any(isinstance(f, _SecureDefaultNotice) for f in notice.filters):
        notice.addFilter(_SecureDefaultNotice())
    try:  # logging_level: Ray's own INFO lines ("Started a local Ray instance") stay out of the terminal
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=True, logging_level=logging.WARNING,
                 runtime_env={"env_vars": env} if env else None)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UserError(f"cannot connect to Ray at {address}: {exc}", key="--address") from None
    if address is None:
        note_ray_runtime()  # a parent process watches the raylet and GCS server started here (fakd.supervisor)
    try:
        yield
    finally:
        note_ray_runtime(stopping=True)
        ray.shutdown()
