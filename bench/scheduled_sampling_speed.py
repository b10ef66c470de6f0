"""Training speed of scheduled sampling against plain teacher forcing, in one run.

Usage:
    python bench/scheduled_sampling_speed.py
    python bench/scheduled_sampling_speed.py --hidden 256 --steps 3

Times one update at eps = 0.5 for the parallel approximation (1 and 2 prediction passes) and for
the exact pixel-by-pixel method, against a teacher-forced update of the same model and batch.
Rounds are interleaved so that machine noise hits every row alike; medians are reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rnn_mnist.models import ModelConfig, NextPixelModel
from rnn_mnist.scheduled_sampling import parallel_mixture, sequential_logits
from rnn_mnist.tasks import pixel_loss
from rnn_mnist.training import optimize, train_step


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--hidden", type=int, default=128, help="GRU hidden size")
    parser.add_argument("--batch-size", type=int, default=128, help="sequences per update")
    parser.add_argument("--steps", type=int, default=2, help="updates per timed round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = NextPixelModel(ModelConfig(hidden_size=args.hidden))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.bernoulli(torch.full((args.batch_size, 784), 0.2))
    generator = torch.Generator().manual_seed(0)

    def sequential() -> None:
        logits, _ = sequential_logits(model, x, 0.5, generator)
        optimize(model, optimizer, pixel_loss(logits, x, "bce"), 1.0)

    rows = {
        "teacher forcing (reference)": lambda: train_step(model, optimizer, x, "bce", 1.0),
        "parallel scheduled sampling, 1 pass": lambda: train_step(
            model, optimizer, x, "bce", 1.0, fed=parallel_mixture(model, x, 0.5, generator, passes=1)
        ),
        "parallel scheduled sampling, 2 passes": lambda: train_step(
            model, optimizer, x, "bce", 1.0, fed=parallel_mixture(model, x, 0.5, generator, passes=2)
        ),
        "sequential (exact) scheduled sampling": sequential,
    }
    for run in rows.values():
        run()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(args.rounds):
        for name, run in rows.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                run()
            times[name].append((time.perf_counter() - start) / args.steps)
    reference = statistics.median(times["teacher forcing (reference)"])
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, GRU-{args.hidden}, "
        f"batch {args.batch_size}, eps = 0.5\n"
    )
    print("| update | seq/s | vs teacher forcing |")
    print("|---|---:|---:|")
    for name, values in times.items():
        seconds = statistics.median(values)
        print(f"| {name} | {args.batch_size / seconds:,.0f} | {reference / seconds:.2f} |")


if __name__ == "__main__":
    main()
