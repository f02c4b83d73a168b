"""Training on several devices: ``torchrun`` + ``torch.distributed`` + ``DistributedDataParallel``.

``torchrun --nproc_per_node N -m csa_lib.cli train ...`` starts N copies of ``csa train``, one per device,
and gives each the environment variables ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``. :func:`setup` joins the process group from them (NCCL on CUDA, gloo on the CPU); a
process started without them (plain ``csa train``, a notebook, a test) is a world of one, and every
function here is then a no-op that costs nothing.

How the pieces split the work (the trainer, ``csa_lib.train``, calls them):

- data: the global batch ``train.batch_size`` is split evenly; rank ``r`` takes items ``[r*b, (r+1)*b)``
  of each global step's ``(index, sample_seed)`` list (:class:`ShardedStepSampler`), so the data order
  stays a function of ``(seed, images seen)`` whatever the number of ranks;
- gradients: ``DistributedDataParallel`` averages them over the ranks during ``backward`` (:func:`wrap`);
- losses that couple the images of a batch (the relativistic-average GAN's ``E[D(fake)]``, the
  consistency term's normalisation by the hole area of the whole batch) use sums over the *global*
  batch (:func:`global_sum`, :func:`batch_mean`, active inside :func:`global_batch`), so that the
  gradient DDP averages is the single-process gradient of the same global batch;
- logs: the per-rank loss values are averaged (:func:`mean_over_ranks`). The same all-reduce is the
  NaN alarm: a NaN on any rank makes the average NaN on every rank, so all ranks stop together;
- files: only rank 0 (:func:`is_main`) writes logs, samples, TensorBoard events and checkpoints.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from .devices import resolve_device

#: How long a collective waits for a rank that stopped answering before it fails (seconds). A dead
#: rank then ends the job instead of hanging the others forever. It must exceed the longest time one
#: rank works alone: rank 0 writing a checkpoint and a sample grid. ``CSA_DIST_TIMEOUT_S`` overrides it.
DEFAULT_TIMEOUT_S = 300.0

_REDUCE_BATCH = False  # True inside `global_batch()`: the batch-coupled loss terms sum over all ranks


# --------------------------------------------------------------------------------------------------
# Who am I
# --------------------------------------------------------------------------------------------------
def launched_by_torchrun() -> bool:
    """True when torchrun (or another launcher using its variables) started this process."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def active() -> bool:
    """True in a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def local_rank() -> int:
    """This process's index on its machine (which GPU it drives)."""
    return int(os.environ.get("LOCAL_RANK", 0)) if active() else 0


def describe(global_batch_size: int) -> dict:
    """What a run records about its processes (start line, every log line, the checkpoint):
    ``{"world_size", "backend", "per_rank_batch"}``; a plain run is ``{1, "none", global batch}``."""
    world = world_size()
    return {"world_size": world, "backend": dist.get_backend() if active() else "none",
            "per_rank_batch": per_rank_batch(global_batch_size, world)}


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one process that writes files."""
    return rank() == 0


# --------------------------------------------------------------------------------------------------
# Process group
# --------------------------------------------------------------------------------------------------
def timeout_s() -> float:
    value = os.environ.get("CSA_DIST_TIMEOUT_S", "")
    try:
        return float(value) if value else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ValueError(f"CSA_DIST_TIMEOUT_S={value!r}: expected a number of seconds") from None


def setup(device: str | torch.device = "auto") -> bool:
    """Join torchrun's process group; True when this process is now one rank of several.

    ``device`` is the run's ``train.device`` (``"auto"`` when not known yet, e.g. before a resumed
    checkpoint is read). CPU -> gloo. CUDA -> this rank drives ``cuda:LOCAL_RANK``, and the group has
    NCCL for CUDA tensors plus gloo for CPU tensors (each collective goes to the backend of its
    tensors' device). A world of one (plain ``csa train``, ``torchrun --nproc_per_node 1``) sets nothing up.
    """
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) <= 1 or dist.is_initialized():
        return active()
    cuda = resolve_device(str(device)).type == "cuda"
    backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
    if cuda:
        n = torch.cuda.device_count()
        local = int(os.environ.get("LOCAL_RANK", 0))
        if local >= n:
            raise ValueError(f"LOCAL_RANK {local} has no GPU: this machine has {n}; start at most {n} "
                             "processes per node (torchrun --nproc_per_node)")
        torch.cuda.set_device(local)
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s()))
    return active()


def teardown() -> None:
    """Leave the process group (at the end of a run, or after an error)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def process_group(device: str | torch.device = "auto"):
    """``with process_group(device):`` joins torchrun's group when launched by it, and leaves it at the
    end, also on an error (a rank that raises then exits instead of waiting for the others)."""
    setup(device)
    try:
        yield
    finally:
        teardown()


def barrier() -> None:
    if active():
        dist.barrier()


def rank_device(device: torch.device) -> torch.device:
    """The device this rank uses: ``cuda`` means this rank's GPU (``cuda:LOCAL_RANK``) under torchrun."""
    if active() and device.type == "cuda":
        return torch.device("cuda", local_rank())
    return device


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` in DistributedDataParallel (``module`` itself in a single process).

    ``forward_sync_buffers=False``: the networks have no buffers (InstanceNorm keeps no running
    statistics), so there is nothing to send before each forward. Every parameter gets a gradient in its phase
    (checked for every ``model.attention`` and ``loss.mode``), hence ``find_unused_parameters=False``:
    no extra traversal of the graph.
    """
    if not active():
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index if device.index is not None else local_rank()] if device.type == "cuda" else None
    # torch >= 2.12 names it forward_sync_buffers (broadcast_buffers is deprecated there); 2.11 knows only
    # broadcast_buffers
    import inspect

    sync = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP).parameters else \
        "broadcast_buffers"
    return DDP(module, device_ids=ids, **{sync: False})


# --------------------------------------------------------------------------------------------------
# Data: each rank its slice of the global batch
# --------------------------------------------------------------------------------------------------
def per_rank_batch(global_batch: int, world: int) -> int:
    """``global_batch / world``; an uneven split is a one-line error (uneven shares would weigh images
    differently in the averaged gradient)."""
    if global_batch % world:
        raise ValueError(f"train.batch_size={global_batch} cannot be split evenly over {world} ranks; "
                         f"use a multiple of {world} (it is the global batch, summed over the ranks)")
    return global_batch // world


class ShardedStepSampler:
    """Rank ``r``'s share of a step sampler: items ``[r*b, (r+1)*b)`` of ``sampler.batch(step)``.

    ``sampler`` is a :class:`csa_lib.train.StepBatchSampler` for the *global* batch. Together the ranks
    see exactly the batches of a single process, so the data order does not depend on the world size.
    """

    def __init__(self, sampler, rank: int, world: int):
        self.sampler, self.rank = sampler, rank
        self.local_batch = per_rank_batch(sampler.batch_size, world)

    def batch(self, step: int) -> list[tuple[int, int]]:
        lo = self.rank * self.local_batch
        return self.sampler.batch(step)[lo:lo + self.local_batch]

    def __iter__(self):
        for step in range(self.sampler.start_step, self.sampler.steps):
            yield self.batch(step)

    def __len__(self) -> int:
        return len(self.sampler)


# --------------------------------------------------------------------------------------------------
# Losses over the global batch
# --------------------------------------------------------------------------------------------------
@contextmanager
def global_batch():
    """Inside, :func:`global_sum` and :func:`batch_mean` reduce over all ranks (the trainer's loss
    computation); outside (evaluation on rank 0 alone, notebooks) they stay local, so that a loss
    computed by one rank never waits for the others."""
    global _REDUCE_BATCH
    before, _REDUCE_BATCH = _REDUCE_BATCH, active()
    try:
        yield
    finally:
        _REDUCE_BATCH = before


def global_sum(x: torch.Tensor) -> torch.Tensor:
    """``x`` summed over the ranks, differentiably (``x`` itself outside :func:`global_batch`).

    The backward pass sums the incoming gradients over the ranks too. With DDP dividing the summed
    parameter gradients by the world size, a loss that every rank computes from global sums gets
    exactly the single-process gradient of the global batch.
    """
    if not _REDUCE_BATCH:
        return x
    from torch.distributed._functional_collectives import all_reduce  # autograd-aware

    return all_reduce(x, "sum", dist.group.WORLD)


def global_count(n: int) -> int:
    """``n`` items on this rank -> items in the global batch (every rank holds the same number)."""
    return n * world_size() if _REDUCE_BATCH else n


def batch_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of all elements of ``x`` over the global batch (``x.mean()`` in a single process)."""
    if not _REDUCE_BATCH:
        return x.mean()
    return global_sum(x.sum()) / global_count(x.numel())


# --------------------------------------------------------------------------------------------------
# Logs and decisions that all ranks must share
# --------------------------------------------------------------------------------------------------
def mean_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average a dict of floats over the ranks (same keys, same order on every rank).

    One all-reduce of a float64 vector. A NaN/Inf on any rank makes that entry NaN/Inf on all ranks:
    the finiteness check that follows then stops every rank at the same step.
    """
    if not active() or not values:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return dict(zip(values, (t / world_size()).tolist()))


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on one (e.g. one rank ran out of its time budget)."""
    if not active():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def check_same(value: int, what: str, device: torch.device) -> None:
    """Raise on every rank unless ``value`` is the same on all (e.g. the step each rank resumed at)."""
    if not active():
        return
    t = torch.tensor([value, -value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    hi, lo = int(t[0]), -int(t[1])
    if hi != lo:
        raise RuntimeError(f"the ranks disagree on {what}: between {lo} and {hi} (rank {rank()} has {value})")
