"""One experiment over several processes: torchrun's ranks, each computing a shard of every batch.

    torchrun --nproc-per-node 2 train.py --exp-name fast --config fast      # 2 ranks, this machine
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 train.py ...

    world = world_from_env()                  # World(rank=0, size=1) without torchrun
    with joined(world, device):               # the process group: gloo on the CPU, NCCL on CUDA
        mine, share = shard(global_batch, world)
        total = all_reduce_sum([local_sum], world)

What it keeps fixed (tests/test_distributed.py):

- ``--batch-size`` is the global batch. Every rank draws the same order of training digits (from
  the seed and the epoch only: the shared generator never serves per-rank draws under torchrun),
  takes every ``size``-th digit of each batch, and weights its mean loss by its share of the batch,
  so the averaged gradient is the one process's, and so is the learning rate a recipe names.
- Rank 0 alone writes (checkpoint, metrics, logs, samples, progress) and holds the experiment lock.
- Per-rank randomness (dropout, scheduled-sampling draws, Python and NumPy) comes from per-rank
  seeds; its states are gathered into the checkpoint, so a resume at the same world size equals an
  uninterrupted run, and one at another world size continues (ranks without saved states re-seed).

Without torchrun (or with one rank) nothing here does anything: a plain ``python train.py`` runs
exactly as it did before this module existed.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import functools
import inspect
import os
import shlex
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from rnn_mnist.errors import RnnMnistError
from rnn_mnist.runtime import capture_rng, restore_rng, set_seed

# torchrun sets these for every worker; MASTER_ADDR/PORT too (the rendezvous).
_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
# How long a collective waits for a rank that neither answers nor dies: longer than any stage that
# runs on rank 0 alone (the epoch's sample picture), short enough that a wedged run ends.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=10)


class RankStopped(RnnMnistError):
    """Another rank of this run stopped (killed, crashed, or refused the run): this one stops too."""


@dataclass(frozen=True)
class World:
    """This process's place in the run: its rank among ``size`` processes, ``local_size`` of them on
    this machine. ``backend`` is None for one process."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    backend: str | None = None

    @property
    def is_writer(self) -> bool:
        """Rank 0 writes everything the run leaves behind; the others write nothing."""
        return self.rank == 0

    @property
    def nodes(self) -> int:
        return max(1, self.size // self.local_size)

    def record(self, device: torch.device) -> dict[str, Any]:
        """What each epoch's ``compute`` record says about the layout: the world size and the
        backend that carries the gradients (none for one process)."""
        backend = "none" if self.size == 1 else "nccl" if device.type == "cuda" else "gloo"
        return {"world_size": self.size, "backend": backend}


SINGLE = World()


def world_from_env(environ: dict[str, str] | None = None) -> World:
    """The run's world as torchrun describes it in the environment; one process without it."""
    env = os.environ if environ is None else environ
    if not all(name in env for name in _ENV):
        return SINGLE
    try:
        rank, size, local_rank, local_size = (int(env[name]) for name in _ENV)
    except ValueError:
        raise RnnMnistError(f"torchrun's {', '.join(_ENV)} are not whole numbers") from None
    if size <= 1:
        return SINGLE
    return World(rank, size, local_rank, local_size)


def check_world(world: World, device: torch.device, batch_size: int) -> None:
    """Refuse layouts that cannot run, in one line, before any work."""
    if world.size == 1:
        return
    if batch_size % world.size:
        raise RnnMnistError(
            f"--batch-size {batch_size} is the global batch and must divide among the {world.size} "
            f"ranks; use a multiple of {world.size}"
        )
    if device.type == "mps":
        raise RnnMnistError("torchrun runs on the CPU (gloo) or CUDA (NCCL), not MPS; pass --device cpu")
    if device.type == "cuda" and world.local_size > torch.cuda.device_count():
        raise RnnMnistError(
            f"{world.local_size} ranks on this machine but {torch.cuda.device_count()} GPUs: one GPU a "
            f"rank; use --nproc-per-node {torch.cuda.device_count()} or fewer"
        )


def rank_device(world: World, device: torch.device) -> torch.device:
    """The device of this rank: its own GPU (``cuda:<local rank>``) on CUDA, the CPU otherwise."""
    if device.type != "cuda" or world.size == 1:
        return device
    torch.cuda.set_device(world.local_rank)
    return torch.device("cuda", world.local_rank)


def threads_per_rank(world: World) -> int:
    """The machine's cores shared among its ranks (torchrun itself would give each one thread);
    ``RNN_MNIST_THREADS`` overrides."""
    if "RNN_MNIST_THREADS" in os.environ:
        try:
            return max(1, int(os.environ["RNN_MNIST_THREADS"]))
        except ValueError:
            raise RnnMnistError("RNN_MNIST_THREADS must be a whole number of threads") from None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // world.local_size)


@contextlib.contextmanager
def joined(world: World) -> Iterator[World]:
    """Join the process group (once a process: a group left and joined again races on its ports)
    and yield the world with its backend. Tensors on the CPU travel by gloo and, where there are
    GPUs, CUDA tensors by NCCL (so the device, known only once a resumed run's settings are read,
    needs no second group). In the block, torchrun's SIGTERM (sent when another rank has ended)
    becomes a RankStopped. One process: nothing to do."""
    if world.size == 1:
        yield world
        return
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    torch.set_num_threads(threads_per_rank(world))
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
        except (RuntimeError, ValueError) as exc:
            raise RnnMnistError(f"could not join the other ranks ({_first_line(exc)})") from None
        atexit.register(_leave)
    previous = signal.signal(signal.SIGTERM, _stopped_by_torchrun)
    try:
        yield World(world.rank, world.size, world.local_rank, world.local_size, backend)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _leave() -> None:
    with contextlib.suppress(Exception):  # a peer already gone: nothing left to leave cleanly
        dist.destroy_process_group()


def _stopped_by_torchrun(signum: int, frame: Any) -> None:
    raise RankStopped("torchrun stopped this rank: another rank ended")


def shard(batch: torch.Tensor, world: World) -> tuple[torch.Tensor, float]:
    """This rank's digits of a global batch (every ``size``-th, from its rank) and the weight of
    its mean loss: its share of the batch times ``size``. DDP averages the ranks' gradients, so
    the weighted means average to the global batch's mean even when the shards differ in size.
    A rank left without digits (a last batch smaller than the world) runs one with weight 0: every
    rank must take part in every gradient all-reduce."""
    if world.size == 1:
        return batch, 1.0
    mine = batch[world.rank :: world.size]
    if len(mine) == 0:
        return batch[:1], 0.0
    return mine, len(mine) * world.size / len(batch)


def my_batches(starts: range, world: World) -> range:
    """This rank's evaluation batches: every ``size``-th of ``starts``, so that each batch sums as it
    does in one process and only the sum of sums changes order."""
    return starts[world.rank :: world.size]


def all_reduce_sum(values: list[float], world: World, device: torch.device | None = None) -> list[float]:
    """The sums over all ranks of ``values`` (float64, on ``device``'s backend); one process: the
    values themselves."""
    if world.size == 1:
        return list(values)
    where = device if device is not None and device.type == "cuda" else torch.device("cpu")
    total = torch.tensor(values, dtype=torch.float64, device=where)
    _collective(dist.all_reduce, total)
    return total.tolist()


def gather_to_writer(obj: Any, world: World) -> list[Any] | None:
    """Every rank's ``obj``, in rank order, on rank 0; None on the other ranks."""
    if world.size == 1:
        return [obj]
    gathered: list[Any] | None = [None] * world.size if world.is_writer else None
    _collective(dist.gather_object, obj, gathered, dst=0)
    return gathered


def broadcast_from_writer(obj: Any, world: World) -> Any:
    """Rank 0's ``obj`` on every rank (objects made by this run, never read from a user's file)."""
    if world.size == 1:
        return obj
    box = [obj if world.is_writer else None]
    _collective(dist.broadcast_object_list, box, src=0)
    return box[0]


@contextlib.contextmanager
def peers_watched(world: World) -> Iterator[None]:
    """A collective in the block failing (a peer killed or gone; DDP's gradient all-reduce inside a
    backward pass too) is this rank's RankStopped, not a traceback."""
    if world.size == 1:
        yield
        return
    try:
        yield
    except (RuntimeError, dist.DistError) as exc:
        raise RankStopped(f"another rank stopped ({_first_line(exc)})") from None


def _collective(call: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return call(*args, **kwargs)
    except (RuntimeError, dist.DistError) as exc:
        raise RankStopped(f"another rank stopped ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def launch_prefix(world: World) -> list[str]:
    """How this run was started, for the resume command: ``python`` or torchrun with its layout."""
    if world.size == 1:
        return ["python"]
    prefix = ["torchrun", "--nproc-per-node", str(world.local_size)]
    if world.nodes > 1:
        endpoint = f"{os.environ.get('MASTER_ADDR', 'HOST')}:{os.environ.get('MASTER_PORT', '29500')}"
        prefix += ["--nnodes", str(world.nodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint]
    return prefix


def launch_words(world: World) -> str:
    return shlex.join(launch_prefix(world))


def rank_seed(seed: int, rank: int) -> int:
    """The seed of a rank's own random streams: rank 0's is the run's seed, so that rank 0 draws
    as the one process would; the others' are spread apart from it (within NumPy's 32 bits)."""
    return (seed + 1_000_003 * rank) % 2**32


class _LossOf(torch.nn.Module):
    """A task's loss as a module's forward: DDP synchronises the gradients of what runs through
    ``forward`` only, and the models' own forward is not the training one."""

    def __init__(self, model: torch.nn.Module, loss: Callable[..., Any]) -> None:
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, *args: Any) -> Any:
        return self.loss(self.model, *args)


def data_parallel(
    model: torch.nn.Module, loss: Callable[..., Any], world: World, device: torch.device
) -> Callable[..., Any]:
    """``loss(model, *args)`` as a callable of ``*args`` whose backward averages the gradients over
    the ranks (DistributedDataParallel; its construction copies rank 0's weights to every rank).
    One process: the loss itself."""
    if world.size == 1:
        return functools.partial(loss, model)
    device_ids = [device.index] if device.type == "cuda" else None
    # The models' buffers are constants: nothing to send before each step (the flag was renamed).
    no_buffer_sync = (
        {"forward_sync_buffers": False}
        if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        else {"broadcast_buffers": False}
    )
    try:
        return DistributedDataParallel(_LossOf(model, loss), device_ids=device_ids, **no_buffer_sync)
    except (RuntimeError, dist.DistError) as exc:
        raise RankStopped(f"another rank stopped ({_first_line(exc)})") from None


def gather_rng(
    generator: torch.Generator, draws: torch.Generator, device: torch.device, world: World
) -> list | None:
    """Every rank's RNG states (runtime.capture_rng's, plus under torchrun the rank's own draws
    generator), in rank order on rank 0; None on the other ranks."""
    state = capture_rng(generator, device)
    if world.size > 1:
        state["draws"] = draws.get_state()
    return gather_to_writer(state, world)


def restore_ranks_rng(
    states: list[dict[str, Any]],
    generator: torch.Generator,
    draws: torch.Generator,
    device: torch.device,
    world: World,
    fresh_seed: int,
) -> str | None:
    """Put back this rank's saved states; a rank the checkpoint has none for (it was saved by fewer
    ranks) seeds its own streams from ``fresh_seed``. The shared generator (the order of digits) is
    rank 0's everywhere. Returns a line for the log when the world size changed."""
    note = None
    mine = states[world.rank] if world.rank < len(states) else None
    if mine is not None:
        note = restore_rng(mine, generator, device)
    else:
        set_seed(rank_seed(fresh_seed, world.rank))
    if draws is not generator:
        if mine is not None and "draws" in mine:
            draws.set_state(mine["draws"])
        else:
            draws.manual_seed(rank_seed(fresh_seed, world.rank))
    generator.set_state(states[0]["shuffle"])
    if len(states) == world.size:
        return note
    change = f"saved by {len(states)} process(es), resumed on {world.size}"
    if len(states) > world.size:
        return f"{change}: the random streams of ranks {world.size}..{len(states) - 1} are dropped"
    return f"{change}: ranks {len(states)}..{world.size - 1} start random streams of their own"
