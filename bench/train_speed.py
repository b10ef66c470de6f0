"""Training speed of the toolkit against a bare nn.GRU + nn.Linear + Adam loop, in one run.

Usage:
    python bench/train_speed.py --data-dir ../shared/mnist
    python bench/train_speed.py --hidden 256 --batch-size 64 --steps 30

Prints two tables: sequences/s of one teacher-forced training step (the toolkit's `train_step`,
with and without its default gradient clipping, against the bare loop; rounds are interleaved so
machine noise hits all alike), and the time from launch to the first training batch (train.py
end to end on one batch, against building the original's Python list of 60k (tensor, label) tuples).
"""

from __future__ import annotations

import argparse
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
from rnn_mnist.training import train_step  # noqa: E402


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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_speeds(hidden: int, batch_size: int, steps: int, rounds: int, device: torch.device) -> list[tuple]:
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((batch_size, 784), 0.2)).to(device)
    bare = BareModel(hidden).to(device)
    bare_opt = torch.optim.Adam(bare.parameters(), lr=1e-3)
    ours = NextPixelModel(ModelConfig(hidden_size=hidden)).to(device)
    ours_opt = torch.optim.Adam(ours.parameters(), lr=1e-3)
    candidates = {
        "bare nn.GRU + Linear + Adam (reference)": lambda: bare_step(bare, bare_opt, x),
        "toolkit train_step, --clip 1.0 (default)": lambda: train_step(ours, ours_opt, x, "bce", 1.0),
        "toolkit train_step, --clip 0": lambda: train_step(ours, ours_opt, x, "bce", None),
    }
    for run in candidates.values():  # warm-up: lazy imports, allocator, oneDNN/cuDNN plans
        run(), run()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, run in candidates.items():
            sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                run()
            sync(device)
            times[name].append((time.perf_counter() - start) / steps)
    reference = statistics.median(times[next(iter(candidates))])
    return [
        (name, batch_size / statistics.median(t), reference / statistics.median(t))
        for name, t in times.items()
    ]


def startup_times(data_dir: str) -> list[tuple[str, float]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            sys.executable,
            str(REPO / "train.py"),
            "--exp-name",
            "startup",
            "--exp-dir",
            tmp,
            "--data-dir",
            data_dir,
            "--epochs",
            "1",
            "--train-subset",
            "128",
            "--batch-size",
            "128",
            "--val-size",
            "1",
            "--test-subset",
            "1",
        ]
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
    parser.add_argument("--steps", type=int, default=5, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median is reported)")
    parser.add_argument("--data-dir", default=None, help="MNIST folder for the start-up table")
    args = parser.parse_args()

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
        f"GRU-{args.hidden}, batch {args.batch_size}, 784 steps per sequence\n"
    )
    print("| device | training step | seq/s | vs reference |")
    print("|---|---|---:|---:|")
    for device in devices:
        for name, speed, ratio in step_speeds(args.hidden, args.batch_size, args.steps, args.rounds, device):
            print(f"| {device.type} | {name} | {speed:,.0f} | {ratio:.3f} |")

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
