"""The distributed context of a training process: its rank, the world size and the few collectives the trainer and
the FAKD covariance need.

With `torch.distributed` initialised (Ray Train's TorchTrainer does that in each worker of a data-parallel trial)
the collectives run over its default process group; alone, every collective is the identity, so a single process
trains exactly as it would without this module. Imports no Ray.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as torch_dist
from torch import Tensor, nn

T = TypeVar("T")
# Gradients are averaged in flat buckets of at most this many elements (bounded extra memory).
GRADIENT_BUCKET_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class DistContext:
    """Rank and world size of this process, and collectives over every process (identities when alone)."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def current(cls) -> DistContext:
        """The default process group of `torch.distributed` when it is initialised, else a single process."""
        if torch_dist.is_available() and torch_dist.is_initialized():
            return cls(torch_dist.get_rank(), torch_dist.get_world_size())
        return cls()

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints, logs and reports."""
        return self.rank == 0

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """The element-wise sum of `tensor` over every process, as a new tensor on `tensor`'s device."""
        if not self.distributed:
            return tensor
        work = tensor.detach().to(_collective_device(), copy=True)
        torch_dist.all_reduce(work)
        return work.to(tensor.device)

    def broadcast_(self, tensor: Tensor, src: int = 0) -> None:
        """Overwrite `tensor` in place with rank `src`'s values."""
        if not self.distributed:
            return
        device = _collective_device()
        if tensor.device == device:
            torch_dist.broadcast(tensor.data, src)
            return
        work = tensor.detach().to(device, copy=True)
        torch_dist.broadcast(work, src)
        tensor.data.copy_(work)

    def broadcast_module_(self, module: nn.Module, src: int = 0) -> None:
        """Give every process rank `src`'s parameters and buffers."""
        for tensor in [*module.parameters(), *module.buffers()]:
            self.broadcast_(tensor, src)

    def broadcast_buffers_(self, module: nn.Module, src: int = 0) -> None:
        """Give every process rank `src`'s buffers (BatchNorm running statistics), as DDP does."""
        for tensor in module.buffers():
            self.broadcast_(tensor, src)

    def average_gradients(self, parameters: Iterable[nn.Parameter]) -> None:
        """Replace every gradient by its mean over the processes (flat all-reduces, one dtype per bucket).

        Every process must hold gradients for the same parameters (the same model and graph on each)."""
        if not self.distributed:
            return
        grads = [p.grad for p in parameters if p.grad is not None]
        device = _collective_device()
        for bucket in _buckets(grads):
            flat = torch.cat([g.reshape(-1) for g in bucket])
            if flat.device == device:
                torch_dist.all_reduce(flat)
            else:
                flat = self.all_reduce_sum(flat)
            flat /= self.world_size
            offset = 0
            for grad in bucket:
                grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
                offset += grad.numel()

    def broadcast_object(self, value: T, src: int = 0) -> T:
        """Rank `src`'s `value` (any picklable object) on every process."""
        if not self.distributed:
            return value
        box: list[Any] = [value]
        torch_dist.broadcast_object_list(box, src)
        return box[0]

    def all_gather_object(self, value: T) -> list[T]:
        """Every process's `value`, in rank order."""
        if not self.distributed:
            return [value]
        found: list[Any] = [None] * self.world_size
        torch_dist.all_gather_object(found, value)
        return found

    def barrier(self) -> None:
        if self.distributed:
            torch_dist.barrier()


def _collective_device() -> torch.device:
    """Where the backend's collectives run: the current CUDA device for NCCL, the CPU otherwise (gloo)."""
    if torch_dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _buckets(grads: list[Tensor]) -> list[list[Tensor]]:
    """Consecutive gradients of one dtype and device, at most GRADIENT_BUCKET_ELEMENTS elements a bucket (a larger
    gradient gets a bucket of its own)."""
    buckets: list[list[Tensor]] = []
    size = 0
    for grad in grads:
        current = buckets[-1] if buckets else None
        if (current is None or current[0].dtype != grad.dtype or current[0].device != grad.device
                or size + grad.numel() > GRADIENT_BUCKET_ELEMENTS):
            buckets.append([grad])
            size = grad.numel()
        else:
            current.append(grad)
            size += grad.numel()
    return buckets


def sync_batchnorm(module: nn.Module) -> nn.Module:
    """`module` with every BatchNorm (timm's BatchNormAct2d included) replaced by its synchronised variant: the
    batch statistics of a data-parallel step are then those of the global batch. The state dict keys stay the same.
    torch's SyncBatchNorm runs on GPUs only."""
    from timm.layers import convert_sync_batchnorm

    return convert_sync_batchnorm(module)
