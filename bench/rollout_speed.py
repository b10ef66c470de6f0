"""Rollout speed: batched completion against a per-digit loop and the naive re-run of the prefix.

Usage:
    python bench/rollout_speed.py --data-dir ../shared/mnist
    python bench/rollout_speed.py --exp-name gru-128 --digits 1000

All three rows complete the last --mask-pixels pixels of the same test digits with greedy feedback.
The batched and per-digit rows use the toolkit's one rollout routine (rnn_mnist.rollout.complete);
the naive row re-runs the whole sequence at every step, as transformer-style samplers do. The slow
rows are timed on a few digits and extrapolated to --digits, and say so.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rnn_mnist.checkpoint import ExperimentPaths  # noqa: E402
from rnn_mnist.data import NUM_PIXELS, DataConfig, load_test_digits  # noqa: E402
from rnn_mnist.evaluation import load_model  # noqa: E402
from rnn_mnist.models import ModelConfig, NextPixelModel  # noqa: E402
from rnn_mnist.rollout import complete  # noqa: E402


@torch.no_grad()
def naive_complete(model: NextPixelModel, pixels: torch.Tensor, mask_pixels: int) -> torch.Tensor:
    """The reference: feed the whole canvas again for every generated pixel."""
    canvas = pixels.float().clone()
    for t in range(NUM_PIXELS - mask_pixels, NUM_PIXELS):
        logits = model.teacher_forced_logits(canvas[:, : t + 1])  # the input for step t is pixel t-1
        canvas[:, t] = (logits[:, t] > 0).float()
    return canvas


def timed(run, repeats: int = 1) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--exp-name", default=None, help="use this experiment's model (else a fresh GRU-128)")
    parser.add_argument("--exp-dir", default="experiments", help="where experiment folders live")
    parser.add_argument("--data-dir", default=None, help="MNIST folder (else random digits)")
    parser.add_argument("--digits", type=int, default=1000, help="digits to complete")
    parser.add_argument("--mask-pixels", type=int, default=284, help="pixels generated per digit")
    parser.add_argument("--loop-digits", type=int, default=50, help="digits timed in the per-digit loop")
    parser.add_argument("--naive-digits", type=int, default=5, help="digits timed in the naive rollout")
    args = parser.parse_args()

    device = torch.device("cpu")
    if args.exp_name:
        model, _ = load_model(ExperimentPaths.of(args.exp_dir, args.exp_name).checkpoint, device)
        what = f"experiment {args.exp_name}"
    else:
        torch.manual_seed(0)
        model, what = NextPixelModel(ModelConfig(hidden_size=128)).eval(), "untrained GRU-128"
    try:
        all_digits = load_test_digits(DataConfig(data_dir=args.data_dir))[0]  # read once, also for CUDA
        source = "MNIST test digits"
    except Exception:
        all_digits = torch.bernoulli(torch.full((args.digits, NUM_PIXELS), 0.2)).to(torch.uint8)
        source = "random digits"
    digits = all_digits[: args.digits]
    n, mask = len(digits), args.mask_pixels
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {what}, {n} {source}, "
        f"{mask} generated pixels each\n"
    )

    complete(model, digits[:8], mask)  # warm-up
    batched = timed(lambda: complete(model, digits, mask), repeats=3)
    loop = timed(lambda: [complete(model, digits[i : i + 1], mask) for i in range(args.loop_digits)])
    loop_total = loop / args.loop_digits * n
    naive = timed(lambda: naive_complete(model, digits[: args.naive_digits], mask))
    naive_total = naive / args.naive_digits * n

    # The naive and batched rollouts must agree: same model, same greedy rule.
    few = digits[: args.naive_digits]
    agree = (
        naive_complete(model, few, mask).to(torch.uint8) == complete(model, few, mask).completed[:, 0]
    ).float()

    rows = [
        (f"batched rollout ({n} digits at once)", batched, "measured"),
        ("per-digit loop of the same routine", loop_total, f"measured on {args.loop_digits}, extrapolated"),
        (
            "naive: re-run the whole prefix every step",
            naive_total,
            f"measured on {args.naive_digits} (batched), extrapolated",
        ),
    ]
    print(f"| cpu: completing {n} digits | seconds | digits/s | batched is x faster | how |")
    print("|---|---:|---:|---:|---|")
    for name, seconds, how in rows:
        print(f"| {name} | {seconds:.3f} | {n / seconds:,.0f} | {seconds / batched:,.1f} | {how} |")
    print(f"\nnaive and batched greedy completions agree on {agree.mean().item():.4%} of pixels")
    if torch.cuda.is_available():
        cuda_model = model.to("cuda")
        complete(cuda_model, all_digits[:8], mask)
        torch.cuda.synchronize()
        seconds = timed(lambda: (complete(cuda_model, all_digits, mask), torch.cuda.synchronize()), repeats=3)
        print(
            f"\ncuda: {len(all_digits)} digits in {seconds:.3f} s ({len(all_digits) / seconds:,.0f} digits/s)"
        )


if __name__ == "__main__":
    main()
