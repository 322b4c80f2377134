"""Training under ``torchrun``: one process per device, the student in ``DistributedDataParallel``.

Nothing here runs without torchrun's environment: a plain ``python -m featdistill.run`` sees ``World()`` (rank 0 of
1) and every helper is then a no-op, so a single process trains exactly as it always has.

Who does what when ``WORLD_SIZE > 1``:

- every rank: builds the models, trains its shard of each global batch (``train.batch_size // world_size`` samples,
  the train sampler interleaving one seeded permutation over the ranks), averages the loss terms and the stop
  signal over the ranks once per step, validates its share of the val batches (reduced to one accuracy);
- rank 0 alone: the teacher stage (training and caching it), the run directory, checkpoints, metrics, the plot and
  the summary; the other ranks wait for it at :func:`wait_for_main` (a barrier with a long timeout of its own)
  and receive the teacher's weights by broadcast, so no shared file system is needed for the teacher.

A failure on any rank ends that process at once with its exit code (:func:`shutdown`); torchrun then stops the
other ranks. The process group has a finite timeout (``FEATDISTILL_DIST_TIMEOUT`` seconds, default 60) so that a
rank stuck in a collective whose peer is gone fails instead of hanging.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..errors import FeatdistillError

TIMEOUT_ENV = "FEATDISTILL_DIST_TIMEOUT"  # seconds a collective may wait (default 60)
WAIT_ENV = "FEATDISTILL_DIST_WAIT"  # seconds ranks wait for rank 0's own work: the teacher stage (default 7 days)
FAILED_KEY = "featdistill/failed"  # "<rank> <exit code>" of the first rank that failed, in the job's store


@dataclass(frozen=True)
class World:
    """This process's place in the job: ``rank`` of ``size`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        """Whether this process writes (the run directory, checkpoints, the teacher cache, what is printed)."""
        return self.rank == 0

    def tag(self) -> str:
        """``' (rank 1 of 2)'`` in a distributed job, else ``''``: for messages that may come from any rank."""
        return f" (rank {self.rank} of {self.size})" if self.distributed else ""


_world = World()
_wait_group: Any = None  # a gloo group with a long timeout, for waiting on rank 0's own work


def from_env(env: dict | None = None) -> World:
    """The world torchrun describes in ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; ``World()`` without them."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env:
        return World()
    try:
        world = World(int(env.get("RANK", 0)), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    except ValueError:
        raise FeatdistillError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them), got "
                               f"{[env.get(k) for k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK')]}") from None
    if not (world.size >= 1 and 0 <= world.rank < world.size and world.local_rank >= 0):
        raise FeatdistillError(f"need 0 <= RANK < WORLD_SIZE, got RANK={world.rank}, WORLD_SIZE={world.size}")
    return world


def current() -> World:
    """The world :func:`start` joined; ``World()`` in a single process."""
    return _world


def seconds(name: str, default: float) -> timedelta:
    """A timeout from the environment variable ``name`` (seconds > 0), else ``default``."""
    text = os.environ.get(name)
    if text is None:
        return timedelta(seconds=default)
    try:
        value = float(text)
        if value <= 0:
            raise ValueError
    except ValueError:
        raise FeatdistillError(f"${name} must be a number of seconds > 0, got {text!r}") from None
    return timedelta(seconds=value)


def start(world: World, device: torch.device) -> torch.device:
    """Join the process group torchrun set up (``nccl`` for CUDA, ``gloo`` for the CPU) and return this rank's device
    (``cuda:LOCAL_RANK``). Ranks other than 0 print nothing to stdout from here on (errors still go to stderr)."""
    global _world, _wait_group
    if device.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise FeatdistillError(f"LOCAL_RANK={world.local_rank} but only {torch.cuda.device_count()} CUDA "
                                   "device(s) are visible: start at most that many processes per node "
                                   "(torchrun --nproc_per_node)")
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, rank=world.rank, world_size=world.size, timeout=seconds(TIMEOUT_ENV, 60))
    except ValueError as exc:  # WORLD_SIZE set by hand, without torchrun's MASTER_ADDR / MASTER_PORT
        raise FeatdistillError(f"WORLD_SIZE={world.size} asks for a distributed run, but the process group cannot "
                               f"start ({str(exc).splitlines()[0]}); launch it with torchrun (see the README's "
                               "'Multi-GPU and multi-node'), or unset WORLD_SIZE for a single process") from None
    _wait_group = dist.new_group(backend="gloo", timeout=seconds(WAIT_ENV, 7 * 24 * 3600))
    _world = world
    if not world.main:
        sys.stdout = open(os.devnull, "w")
    return device


def shutdown(code: int) -> int:
    """Leave the job with ``code``. On success every rank waits for the others (rank 0 writes the summary last),
    then the group is torn down. On failure this process exits at once, first telling the job's store which rank
    failed and how (:func:`first_failure`): a clean teardown could wait forever on a rank that is gone, and
    torchrun stops the other ranks once one has exited."""
    global _world, _wait_group
    if not _world.distributed:
        return code
    if code == 0:
        try:
            wait_for_main()
        except Exception:  # rank 0 failed while this rank waited for it
            failed = first_failure()
            print(f"stopped{_world.tag()}: rank {failed[0] if failed else '?'} failed; its error is above",
                  file=sys.stderr)
            code = failed[1] if failed else 1
    if code in (130, 143):  # every rank stopped at the same step on a signal: let rank 0 finish its checkpoint
        with contextlib.suppress(Exception):
            wait_for_main()
    if code != 0:
        store = _store()
        if store is not None:  # only the first failure is recorded
            with contextlib.suppress(Exception):
                store.compare_set(FAILED_KEY, "", f"{_world.rank} {code}")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    dist.destroy_process_group()
    _world, _wait_group = World(), None
    return code


def peer_failed(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that failed because another rank stopped (its own message says why)."""
    if not _world.distributed:
        return False
    text = str(exc)
    return isinstance(exc, dist.DistError) or any(k in text for k in ("Gloo", "gloo", "NCCL", "Connection closed"))


def _store() -> Any:
    """The job's key-value store (torchrun's rendezvous store), or None if torch no longer exposes it."""
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:
        return None


def first_failure() -> tuple[int, int] | None:
    """``(rank, exit code)`` of the rank whose failure ended the job, if it could say so before it exited."""
    store = _store()
    try:
        if store is not None and store.check([FAILED_KEY]):
            rank, code = store.get(FAILED_KEY).decode().split()
            return int(rank), int(code)
    except Exception:
        pass
    return None


def per_rank_batch(global_batch: int, world: World) -> int:
    """``train.batch_size`` is the global batch: each rank takes ``global_batch // world.size`` samples."""
    if global_batch % world.size:
        near = [b for b in (global_batch - global_batch % world.size, global_batch + world.size
                            - global_batch % world.size) if b > 0]
        raise FeatdistillError(f"train.batch_size={global_batch} is the global batch and must divide evenly over "
                               f"the {world.size} processes; use e.g. --set train.batch_size={near[-1]}"
                               + (f" or {near[0]}" if len(near) > 1 else ""))
    return global_batch // world.size


def seed_rank(seed: int, world: World) -> None:
    """Give each rank its own random stream, derived from ``seed`` (dropout, drop-path, sampled negatives); rank 0
    keeps the stream a single process would have. Call after the models are built (they must start equal)."""
    if world.rank == 0:
        return
    from ..data.augment import mix_seed  # one stable mixing function for every derived seed

    derived = mix_seed(seed, world.rank, 0x5EED)
    torch.manual_seed(derived)
    random.seed(derived)


def wait_for_main() -> None:
    """Every rank waits here until all arrive, however long rank 0's own work (the teacher stage) takes."""
    if _world.distributed:
        dist.barrier(group=_wait_group)


def share(obj: Any) -> Any:
    """Rank 0's ``obj`` (any picklable value) on every rank."""
    if not _world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_wait_group)
    return box[0]


@torch.no_grad()
def broadcast_module(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers into ``module`` on every rank (same architecture everywhere)."""
    if not _world.distributed:
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src=0)


def wrap(module: nn.Module, device: torch.device, sync_bn: bool = False) -> nn.Module:
    """``module`` (the Distiller: student and adapters; its teacher is no submodule) in DDP, which starts every rank
    from rank 0's weights and averages the gradients; itself in a single process. ``sync_bn`` turns its BatchNorm
    layers into ``SyncBatchNorm`` first (CUDA only)."""
    if not _world.distributed:
        return module
    if sync_bn:
        if device.type != "cuda":
            raise FeatdistillError("train.sync_bn=True needs CUDA devices (SyncBatchNorm has no CPU kernel); "
                                   "drop it for a CPU run")
        for name, child in module.named_children():  # in place: the Distiller's hooks stay on the same modules
            setattr(module, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
    return nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def average(values: torch.Tensor, stop: int | None, world: World) -> tuple[list[float], int | None]:
    """``values`` (a 1-D float tensor) averaged over the ranks, as floats, and the number of a stop signal any rank
    received (else None): one collective and one host sync per step, and every rank stops at the same step."""
    if not world.distributed:
        return values.tolist(), stop
    signalled = [float(stop or 0), float(stop is not None)]  # summed: the signals' total and how many ranks got one
    total = torch.cat([values, torch.tensor(signalled, device=values.device)])
    dist.all_reduce(total)
    *summed, signals, ranks = total.tolist()
    if not ranks:
        return [v / world.size for v in summed], None
    # a rank with no signal of its own stops on the others' (all the same, as a Ctrl-C to the group gives)
    return [v / world.size for v in summed], stop if stop is not None else round(signals / ranks)


def sum_counts(counts: list[float], device: torch.device, world: World) -> list[float]:
    """``counts`` summed over the ranks (e.g. correct and total predictions of sharded evaluation, or each rank's
    images/s), each returned as the type it came in (float64 holds integers exactly up to 2**53)."""
    if not world.distributed:
        return counts
    t = torch.tensor(counts, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return [type(c)(v) for c, v in zip(counts, t.tolist())]
