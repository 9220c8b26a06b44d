"""Process-group setup from torchrun's environment, and the collectives the loss needs.

torchrun (or `srun torchrun ...`) sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT for every
process. Without them the program is a single process and every helper here is a no-op, so callers never
branch on "am I distributed?" themselves: they call `all_gather_with_grad(x)` and get `x` back when alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from trainer.devices import DeviceError, resolve_device

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: its global rank, its rank on the node, the number of processes, its device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    is_main: bool

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise RuntimeError(f"environment variable {name}={value!r} must be an integer (torchrun sets it)") from None


def _rank_device(local_rank: int, use_cuda: bool) -> torch.device:
    """This rank's device: its own GPU (cuda:LOCAL_RANK, made current) or the CPU."""
    if not use_cuda:
        return torch.device("cpu")
    try:
        device = resolve_device("cuda", local_rank, name=f"LOCAL_RANK={local_rank} needs")
    except DeviceError as exc:
        raise RuntimeError(f"{exc}; start at most one process per GPU (torchrun --nproc_per_node)") from None
    torch.cuda.set_device(device)
    return device


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun described in the environment, or describe a lone process.

    device: "auto" uses this rank's GPU (cuda:LOCAL_RANK, made current) with NCCL when CUDA is present, else
    the CPU with gloo; "cpu" forces CPU + gloo even on a GPU machine; "cuda" requires a GPU.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"init_distributed(device={device!r}): use 'auto', 'cpu' or 'cuda'")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("init_distributed(device='cuda') but CUDA is not available here; use 'auto' or 'cpu'")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())

    if not all(name in os.environ for name in _TORCHRUN_VARS):
        dev = _rank_device(0, use_cuda)
        return DistInfo(rank=0, local_rank=0, world_size=1, device=dev, is_main=True)

    rank, local_rank, world_size = _env_int("RANK"), _env_int("LOCAL_RANK"), _env_int("WORLD_SIZE")
    dev = _rank_device(local_rank, use_cuda)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        # device_id binds NCCL's communicator to this GPU at once (no guessing from the current device).
        kwargs = {"device_id": dev} if use_cuda else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, **kwargs)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=dev, is_main=rank == 0)


def is_dist() -> bool:
    """True when a process group with more than one member is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Wait for every rank; a no-op for a lone process."""
    if is_dist():
        dist.barrier()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (any picklable value); `obj` itself for a lone process."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj` (any picklable value), in rank order, on every rank; [obj] for a lone process."""
    if not is_dist():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def cleanup() -> None:
    """Leave the process group (call once at exit; safe to call when none was started)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's `tensor` along dim 0 (rank order); the result carries no gradient.

    Every rank must pass the same shape (the loaders drop the last short batch for this reason).
    """
    if not is_dist():
        return tensor.detach()
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.detach().contiguous())
    return torch.cat(parts, dim=0)


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sends each rank the summed gradient of its own slice.

    Every rank's loss may depend on every rank's features, so the gradient of the *sum of all ranks'
    losses* with respect to this rank's slice is the all_reduce(sum) of the gathered gradients, sliced.
    (Same maths as torch.distributed.nn.all_gather.)
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.rows = dist.get_rank(), tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        grad = grad_output.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's `tensor` along dim 0, letting gradients flow back to each rank's slice.

    The gradient a rank receives for its slice is the sum over all ranks of d(loss_r)/d(slice): with DDP
    averaging parameter gradients over ranks, this makes N ranks equal one process on the whole batch.
    Every rank must pass the same shape.
    """
    if not is_dist():
        return tensor
    return _AllGatherWithGrad.apply(tensor)
