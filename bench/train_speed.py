"""Training speed of the toolkit against a bare nn.GRU + nn.Linear + Adam loop, in one run.

Usage:
    python bench/train_speed.py --data-dir ../shared/mnist
    python bench/train_speed.py --hidden 256 --batch-size 64 --rounds 5
    python bench/train_speed.py --only data-parallel        # the data-parallel table alone

Prints three tables. First, sequences/s of one teacher-forced training step, one row per way of
running it: the bare fp32 loop a from-scratch script would write (the reference), the toolkit on
nn.GRU as it ran before rnn_mnist/kernels/gru.py, and the toolkit with each precision and CPU setting of
rnn_mnist/runtime.py. Every row runs in a fresh process, because the allocator and GEMM-routing
settings are process-wide; rounds are interleaved so that machine noise hits all rows alike, and the
median is reported. Each row also gives the step's FLOPs (the GEMMs: forward, and twice that
backward) and the GFLOP/s they ran at.

Second, data parallelism on the fast GRU with the CPU settings, plain and with configs/fast.toml's
inputs (3 x 7 context, position), on gru.py's torch-op recurrence (RNN_MNIST_NATIVE=0, as when
docs/speed.md's table was recorded): one process on ``--ranks`` threads (each input set's reference)
against ``torchrun --nproc-per-node RANKS`` (gloo) with one thread a rank, at the same global batch.
Both run train.py's step: rnn_mnist.distributed's world, shard and DistributedDataParallel around
the task's loss, rnn_mnist.training.optimize, the loss all-reduced. Sequences/s count the global
batch, timed on rank 0 (every step ends in the loss's all-reduce, so it covers all ranks). The
all-reduce share is 1 - t(no sync) / t(sync): steps with DDP's gradient all-reduce skipped
(``no_sync()``) interleaved with normal steps in the same ranks, so it is the time the gradient
all-reduce adds to a step (what backward does not hide).

Third, the time from launch to the first training batch. ``--only`` runs one of the tables.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rnn_mnist.config import TrainConfig  # noqa: E402
from rnn_mnist.data import DataConfig, load_binarized_mnist  # noqa: E402
from rnn_mnist.distributed import World, all_reduce_sum, data_parallel, joined, shard, world_from_env  # noqa: E402
from rnn_mnist.kernels import native  # noqa: E402
from rnn_mnist.mnist_files import load_mnist_split, resolve_data_dir  # noqa: E402
from rnn_mnist.models import ModelConfig, NextPixelModel  # noqa: E402
from rnn_mnist.runtime import configure_cpu_math  # noqa: E402
from rnn_mnist.tasks import make_task  # noqa: E402
from rnn_mnist.training import optimize, train_step  # noqa: E402

# name -> (what runs, model inputs, precision, apply rnn_mnist.runtime's CPU settings)
PLAIN, RICH = {}, {"context": True, "position": True, "num_classes": 10}
ROWS = {
    "bare nn.GRU + Linear + Adam, fp32 (reference)": ("bare", PLAIN, "fp32", False),
    "bare nn.GRU + Linear + Adam, fp32, CPU settings": ("bare", PLAIN, "fp32", True),
    "toolkit on nn.GRU, fp32, default settings (before)": ("nn", PLAIN, "fp32", False),
    "toolkit on nn.GRU, fp32, CPU settings": ("nn", PLAIN, "fp32", True),
    "toolkit on nn.GRU, bf16 autocast, CPU settings": ("nn", PLAIN, "bf16", True),
    "toolkit fast GRU, fp32, default settings": ("fast", PLAIN, "fp32", False),
    "toolkit fast GRU, fp32, CPU settings": ("fast", PLAIN, "fp32", True),
    "toolkit fast GRU + fused C recurrence, fp32, CPU settings": ("fast-c", PLAIN, "fp32", True),
    "toolkit fast GRU, bf16, CPU settings": ("fast", PLAIN, "bf16", True),
    "+ context, position, label: on nn.GRU, fp32, default settings (before)": ("nn", RICH, "fp32", False),
    "+ context, position, label: fast GRU, fp32, CPU settings": ("fast", RICH, "fp32", True),
    "+ context, position, label: fast GRU + fused C recurrence, fp32, CPU settings": (
        "fast-c",
        RICH,
        "fp32",
        True,
    ),
    "+ context, position, label: fast GRU, bf16, CPU settings": ("fast", RICH, "bf16", True),
}
# "fast" rows run gru.py's torch-op recurrence (RNN_MNIST_NATIVE=0 in their process), as before the
# fused C recurrence (rnn_mnist/kernels/native_recurrence.py); "fast-c" rows run the C loops, as
# training now does in fp32 (bf16 stays on the torch ops either way).
# The data-parallel table's input sets: name in the table, ModelConfig fields. "fast" is
# configs/fast.toml's inputs (no label, as the recipe trains).
DATA_PARALLEL = {
    "plain": ("toolkit fast GRU, fp32, CPU settings", PLAIN),
    "fast": (
        "+ context 3 x 7, position (configs/fast.toml)",
        {"context": True, "context_rows": 3, "context_width": 7, "position": True},
    ),
}
TABLES = ("step", "data-parallel", "startup")


class BareModel(nn.Module):
    """The reference: what a from-scratch script would write."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.gru = nn.GRU(1, hidden, batch_first=True)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1).unsqueeze(-1)
        h, _ = self.gru(inputs)
        return self.out(h).squeeze(-1)


def bare_step(model: BareModel, optimizer: torch.optim.Optimizer, x: torch.Tensor) -> None:
    loss = F.binary_cross_entropy_with_logits(model(x), x)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def step_flops(config: ModelConfig, batch_size: int) -> float:
    """GEMM FLOPs of one training step: forward (recurrent, input and output projections), and
    twice the forward for the backward pass (input and weight gradients)."""
    hidden, gates = config.hidden_size, 3 * config.hidden_size
    per_pixel = 2 * hidden * gates + 2 * config.input_size * gates + 2 * hidden
    return 3 * per_pixel * 784 * batch_size


def worker(row: str, hidden: int, batch_size: int, steps: int, device: torch.device) -> None:
    """Time ``steps`` training steps of one row in this process; print JSON."""
    kind, inputs, precision, cpu_settings = ROWS[row]
    os.environ["RNN_MNIST_NATIVE"] = "1" if kind == "fast-c" else "0"  # read when the kernel first loads
    if kind == "fast-c" and native.load_kernel() is None:  # not torch ops timed under the C row's name
        raise SystemExit(f"{row}: the fused C recurrence cannot run here: {native.kernel_status()}")
    if cpu_settings:
        configure_cpu_math()
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((batch_size, 784), 0.2)).to(device)
    labels = (torch.arange(batch_size) % 10).to(device)
    config = ModelConfig(hidden_size=hidden, **inputs)
    if kind == "bare":
        model = BareModel(hidden).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

        def run() -> None:
            bare_step(model, optimizer, x)
    else:
        model = NextPixelModel(config).to(device)
        model.fast_gru = kind in ("fast", "fast-c")
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        given = labels if config.num_classes else None

        def run() -> None:
            train_step(model, optimizer, x, "bce", 1.0, given, precision=precision)

    run(), run()  # warm-up: allocator, oneDNN plans
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        run()
    sync()
    seconds = (time.perf_counter() - start) / steps
    print(json.dumps({"seconds": seconds, "flops": step_flops(config, batch_size)}))


def data_parallel_step(
    inputs: dict, hidden: int, batch_size: int, world: World
) -> tuple[Callable[[], float], Callable[[], contextlib.AbstractContextManager]]:
    """train.py's update on this rank's shard of a global batch, as rnn_mnist/training.py's
    ``_train_batch`` runs it (the lr schedule aside), and the context that skips DDP's gradient
    all-reduce (one process: nothing to skip)."""
    device = torch.device("cpu")
    torch.manual_seed(0)  # the same global batch and weights on every rank
    pixels = torch.bernoulli(torch.full((batch_size, 784), 0.2)).to(torch.uint8)  # as data.py's
    labels = torch.arange(batch_size) % 10
    mine, share = shard(torch.arange(batch_size), world)
    batch, batch_labels = pixels[mine], labels[mine]
    task = make_task({}, TrainConfig(exp_name="bench", batch_size=batch_size), DataConfig())
    model = task.build_model(ModelConfig(hidden_size=hidden, **inputs)).to(device)
    loss = data_parallel(model, task.loss, world, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    draws = torch.Generator().manual_seed(0)

    def step() -> float:
        value, _ = loss(batch, batch_labels, 0, draws)
        if world.size > 1:
            value = value * share
        total = optimize(model, optimizer, value, None).item()
        if world.size > 1:  # also what makes rank 0's clock wait for every rank
            total = all_reduce_sum([total], world, device)[0] / world.size
        return total

    return step, loss.no_sync if world.size > 1 else contextlib.nullcontext


def data_parallel_worker(inputs: str, hidden: int, batch_size: int, steps: int, threads: int) -> None:
    """Time one data-parallel row: this process alone on ``threads`` threads, or under torchrun one
    rank of it (its threads are rnn_mnist.distributed's, RNN_MNIST_THREADS). Steps with and without
    the gradient all-reduce alternate; rank 0 prints JSON (mean seconds a step of each)."""
    # The torch-op recurrence, as when docs/speed.md's data-parallel table was recorded (before the
    # fused C recurrence): the table keeps measuring the same thing. Read when the kernel first loads.
    os.environ["RNN_MNIST_NATIVE"] = "0"
    with joined(world_from_env()) as world:
        if world.size == 1:
            torch.set_num_threads(threads)
        configure_cpu_math()
        step, no_sync = data_parallel_step(DATA_PARALLEL[inputs][1], hidden, batch_size, world)
        step(), step()  # warm-up: allocator, oneDNN plans, DDP's buckets (rebuilt after a step)
        with no_sync():
            step()
        synced, unsynced = [], []
        for _ in range(steps):
            start = time.perf_counter()
            step()
            synced.append(time.perf_counter() - start)
            if world.size > 1:
                start = time.perf_counter()
                with no_sync():
                    step()
                unsynced.append(time.perf_counter() - start)
        if world.is_writer:
            result = {"seconds": statistics.fmean(synced), "ranks": world.size}
            result["no_sync_seconds"] = statistics.fmean(unsynced) if unsynced else None
            print(json.dumps({**result, "threads": torch.get_num_threads()}), flush=True)


def run_worker(command: list[str], env: dict[str, str] | None = None) -> dict:
    """Run one row's process; its last JSON line. A failed row stops the bench with its stderr."""
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    if done.returncode:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise SystemExit(f"row failed ({shlex.join(command)}):\n{tail}")
    return json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])


def step_speeds(
    hidden: int, batch_size: int, steps: int, rounds: int, device: str
) -> list[tuple[str, float, float, float]]:
    times: dict[str, list[float]] = {row: [] for row in ROWS}
    flops: dict[str, float] = {}
    for _ in range(rounds):
        for row in ROWS:
            command = [sys.executable, __file__, "--worker", row, "--hidden", str(hidden)]
            command += ["--batch-size", str(batch_size), "--steps", str(steps), "--device", device]
            result = run_worker(command)
            times[row].append(result["seconds"])
            flops[row] = result["flops"]
    reference = statistics.median(next(iter(times.values())))
    return [
        (
            row,
            batch_size / statistics.median(t),
            reference / statistics.median(t),
            flops[row] / statistics.median(t),
        )
        for row, t in times.items()
    ]


def data_parallel_command(inputs: str, ranks: int, args: argparse.Namespace) -> tuple[list[str], dict]:
    """One data-parallel row's command and environment: ``ranks`` 1 is one process on
    ``args.ranks`` threads; more is torchrun with one thread a rank."""
    # fmt: off
    worker = [
        str(Path(__file__).resolve()), "--data-parallel-worker", inputs, "--hidden", str(args.hidden),
        "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--threads", str(args.ranks),
    ]
    # fmt: on
    if ranks == 1:
        return [sys.executable, *worker], {**os.environ, "OMP_NUM_THREADS": str(args.ranks)}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks), "--standalone"]
    return [*launcher, *worker], {**os.environ, "OMP_NUM_THREADS": "1", "RNN_MNIST_THREADS": "1"}


def data_parallel_speeds(args: argparse.Namespace) -> list[tuple[str, float, float, float | None]]:
    """Rows of (name, sequences/s of the global batch, ratio to the input set's one process,
    share of a step the gradient all-reduce adds, None for one process); rounds interleaved."""
    layouts = {
        1: f"1 process x {args.ranks} threads",
        args.ranks: f"{args.ranks} ranks x 1 thread (torchrun, gloo)",
    }
    rows = [(inputs, ranks) for inputs in DATA_PARALLEL for ranks in layouts]
    synced: dict[tuple[str, int], list[float]] = {row: [] for row in rows}
    unsynced: dict[tuple[str, int], list[float]] = {row: [] for row in rows}
    for _ in range(args.rounds):
        for inputs, ranks in rows:
            result = run_worker(*data_parallel_command(inputs, ranks, args))
            if result["threads"] != (args.ranks if ranks == 1 else 1):  # the layout the row names
                raise SystemExit(f"{layouts[ranks]} ran {result['threads']} thread(s) a process")
            synced[inputs, ranks].append(result["seconds"])
            if result["no_sync_seconds"] is not None:
                unsynced[inputs, ranks].append(result["no_sync_seconds"])
    table = []
    for inputs, ranks in rows:
        seconds = statistics.median(synced[inputs, ranks])
        reference = statistics.median(synced[inputs, 1])
        share = 1 - statistics.median(unsynced[inputs, ranks]) / seconds if ranks > 1 else None
        name = f"{DATA_PARALLEL[inputs][0]}: {layouts[ranks]}" + (" (reference)" if ranks == 1 else "")
        table.append((name, args.batch_size / seconds, reference / seconds, share))
    return table


def print_data_parallel_table(args: argparse.Namespace) -> None:
    if args.device != "cpu":
        print("\n(data-parallel table skipped: its rows run on the CPU, gloo)")
        return
    rows = data_parallel_speeds(args)
    print(
        f"\n| data-parallel training step (cpu), global batch {args.batch_size} | seq/s "
        "| vs 1 process | gradient all-reduce share |"
    )
    print("|---|---:|---:|---:|")
    for name, speed, ratio, share in rows:
        shown = "-" if share is None else f"{share:.1%}"
        print(f"| {name} | {speed:,.0f} | {ratio:.2f} | {shown} |")
    print(
        f"\nTarget: {args.ranks} ranks >= 1.4x one process. All-reduce share: 1 - t(step with DDP's "
        "gradient all-reduce skipped, no_sync()) / t(step), the two alternating in the same ranks."
    )


def startup_times(data_dir: str) -> list[tuple[str, float]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # fmt: off
        command = [
            sys.executable, str(REPO / "train.py"), "--exp-name", "startup", "--exp-dir", tmp,
            "--data-dir", data_dir, "--epochs", "1", "--train-subset", "128", "--batch-size", "128",
            "--val-size", "1", "--test-subset", "1",
        ]
        # fmt: on
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, cwd=REPO)
        rows.append(
            (
                "train.py launch -> one batch trained, evaluated, saved (upper bound)",
                time.perf_counter() - start,
            )
        )
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import train"], check=True, cwd=REPO)
    rows.append(("  of which: Python start + imports", time.perf_counter() - start))
    start = time.perf_counter()
    load_binarized_mnist(DataConfig(data_dir=data_dir))
    rows.append(("  of which: read + split + binarise all 70k digits", time.perf_counter() - start))

    from torchvision.datasets import MNIST
    from torchvision.transforms import ToTensor

    start = time.perf_counter()
    tuples = list(MNIST(data_dir, train=True, transform=ToTensor()))  # the original's approach
    rows.append(
        (f"reference: Python list of {len(tuples):,} (tensor, label) tuples", time.perf_counter() - start)
    )
    return rows


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--hidden", type=int, default=128, help="GRU hidden size")
    parser.add_argument("--batch-size", type=int, default=128, help="sequences per step (the global batch)")
    parser.add_argument(
        "--steps",
        type=int,
        default=4,
        help="timed steps per row and round (data-parallel rows: as many again without gradient sync)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median is reported)")
    parser.add_argument("--data-dir", default=None, help="MNIST folder for the start-up table")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the fast GRU rows run nn.GRU there)")
    parser.add_argument("--only", choices=("all", *TABLES), default="all", help="run this table alone")
    parser.add_argument(
        "--ranks",
        type=int,
        default=2,
        help="data-parallel table: torchrun's ranks, and the one process's threads",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data-parallel-worker", choices=DATA_PARALLEL, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    launching = not (args.worker or args.data_parallel_worker)  # a row's own process checks nothing
    if (
        launching
        and args.only in ("all", "data-parallel")
        and (args.ranks < 2 or args.batch_size % args.ranks)
    ):
        parser.error(f"--ranks must be 2 or more and divide --batch-size {args.batch_size}")
    if min(args.steps, args.rounds) < 1:
        parser.error("--steps and --rounds must be 1 or more")
    return args


def print_step_table(args: argparse.Namespace) -> None:
    print(f"\n| training step ({args.device}) | seq/s | vs reference | GFLOP/step | GFLOP/s |")
    print("|---|---:|---:|---:|---:|")
    for name, speed, ratio, flop_rate in step_speeds(
        args.hidden, args.batch_size, args.steps, args.rounds, args.device
    ):
        flops = flop_rate * args.batch_size / speed
        print(f"| {name} | {speed:,.0f} | {ratio:.2f} | {flops / 1e9:.1f} | {flop_rate / 1e9:.0f} |")


def print_startup_table(args: argparse.Namespace) -> None:
    data_dir = resolve_data_dir(args.data_dir)
    try:
        load_mnist_split(data_dir, train=False)
    except Exception as exc:
        print(f"\n(start-up table skipped: {exc})")
        return
    print("\n| from launch to first training batch | seconds |")
    print("|---|---:|")
    for name, seconds in startup_times(data_dir):
        print(f"| {name} | {seconds:.2f} |")


def main() -> None:
    args = parse_args()
    if args.worker:
        return worker(args.worker, args.hidden, args.batch_size, args.steps, torch.device(args.device))
    if args.data_parallel_worker:
        return data_parallel_worker(
            args.data_parallel_worker, args.hidden, args.batch_size, args.steps, args.threads
        )

    settings = configure_cpu_math()  # only to report what the "CPU settings" rows use
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, GRU-{args.hidden}, "
        f"batch {args.batch_size}, 784 steps per sequence; CPU settings: fp32 GEMMs "
        f"{settings['float32_matmul_precision']!r}, allocator {settings['allocator']!r}"
    )
    tables = TABLES if args.only == "all" else (args.only,)
    if "step" in tables:
        print_step_table(args)
    if "data-parallel" in tables:
        print_data_parallel_table(args)
    if "startup" in tables:
        print_startup_table(args)


if __name__ == "__main__":
    main()
