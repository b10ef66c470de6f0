"""Training speed of the toolkit against a bare nn.GRU + nn.Linear + Adam loop, in one run.

Usage:
    python bench/train_speed.py --data-dir ../shared/mnist
    python bench/train_speed.py --hidden 256 --batch-size 64 --rounds 5

Prints two tables. First, sequences/s of one teacher-forced training step, one row per way of
running it: the bare fp32 loop a from-scratch script would write (the reference), the toolkit on
nn.GRU as it ran before rnn_mnist/kernels/gru.py, and the toolkit with each precision and CPU setting of
rnn_mnist/runtime.py. Every row runs in a fresh process, because the allocator and GEMM-routing
settings are process-wide; rounds are interleaved so that machine noise hits all rows alike, and the
median is reported. Each row also gives the step's FLOPs (the GEMMs: forward, and twice that
backward) and the GFLOP/s they ran at. Second, the time from launch to the first training batch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rnn_mnist.data import (  # noqa: E402
    DataConfig,
    load_binarized_mnist,
    load_mnist_split,
    resolve_data_dir,
)
from rnn_mnist.models import ModelConfig, NextPixelModel  # noqa: E402
from rnn_mnist.runtime import configure_cpu_math  # noqa: E402
from rnn_mnist.training import train_step  # noqa: E402

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
    "toolkit fast GRU, bf16, CPU settings": ("fast", PLAIN, "bf16", True),
    "+ context, position, label: on nn.GRU, fp32, default settings (before)": ("nn", RICH, "fp32", False),
    "+ context, position, label: fast GRU, fp32, CPU settings": ("fast", RICH, "fp32", True),
    "+ context, position, label: fast GRU, bf16, CPU settings": ("fast", RICH, "bf16", True),
}


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
        model.fast_gru = kind == "fast"
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


def step_speeds(
    hidden: int, batch_size: int, steps: int, rounds: int, device: str
) -> list[tuple[str, float, float, float]]:
    times: dict[str, list[float]] = {row: [] for row in ROWS}
    flops: dict[str, float] = {}
    for _ in range(rounds):
        for row in ROWS:
            command = [sys.executable, __file__, "--worker", row, "--hidden", str(hidden)]
            command += ["--batch-size", str(batch_size), "--steps", str(steps), "--device", device]
            result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--hidden", type=int, default=128, help="GRU hidden size")
    parser.add_argument("--batch-size", type=int, default=128, help="sequences per step")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per row and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median is reported)")
    parser.add_argument("--data-dir", default=None, help="MNIST folder for the start-up table")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the fast GRU rows run nn.GRU there)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.hidden, args.batch_size, args.steps, torch.device(args.device))

    settings = configure_cpu_math()  # only to report what the "CPU settings" rows use
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, GRU-{args.hidden}, "
        f"batch {args.batch_size}, 784 steps per sequence; CPU settings: fp32 GEMMs "
        f"{settings['float32_matmul_precision']!r}, allocator {settings['allocator']!r}\n"
    )
    print(f"| training step ({args.device}) | seq/s | vs reference | GFLOP/step | GFLOP/s |")
    print("|---|---:|---:|---:|---:|")
    for name, speed, ratio, flop_rate in step_speeds(
        args.hidden, args.batch_size, args.steps, args.rounds, args.device
    ):
        flops = flop_rate * args.batch_size / speed
        print(f"| {name} | {speed:,.0f} | {ratio:.2f} | {flops / 1e9:.1f} | {flop_rate / 1e9:.0f} |")

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


if __name__ == "__main__":
    main()
