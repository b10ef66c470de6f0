"""Rollout speed: completing test digits before and after the fast GRU and the fused C step, in one run.

Usage:
    python bench/rollout_speed.py --data-dir ../shared/mnist --exp-name ctx-fast
    python bench/rollout_speed.py --digits 1000 --rounds 1

Every row completes the last --mask-pixels pixels of the same --digits test digits greedily with the
toolkit's one rollout routine (rnn_mnist.rollout.complete), in a fresh process (the CPU settings of
rnn_mnist/runtime.py are process-wide), rounds interleaved, median reported. "before" is the
toolkit as it ran before: nn.GRU, fp32, default settings, 1,000 digits a batch, as evaluate.py does.
"torch-op step" is the fast step in torch ops (rnn_mnist/kernels/fast_step.py, gru.py); "fused C
step" is rnn_mnist/kernels/native.py.
Each row's completions are compared with the before row's: the fraction of generated pixels that
agree. A last check re-runs the whole prefix for every generated pixel (the naive way) on a few
digits and compares. A second table times in-painting (rnn_mnist/masks.py, --inpaint-digits
digits, all at once): blind filling against sequential Monte Carlo with K particles.
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rnn_mnist.checkpoint import ExperimentPaths  # noqa: E402
from rnn_mnist.data import NUM_PIXELS, DataConfig, load_test_digits  # noqa: E402
from rnn_mnist.evaluation import load_model  # noqa: E402
from rnn_mnist.kernels import native  # noqa: E402
from rnn_mnist.masks import parse_mask  # noqa: E402
from rnn_mnist.models import ModelConfig, NextPixelModel  # noqa: E402
from rnn_mnist.rollout import complete  # noqa: E402
from rnn_mnist.runtime import configure_cpu_math  # noqa: E402

# name -> (fast GRU, fused C step, precision, CPU settings, digits per batch; 0: all at once)
ROWS = {
    "before: nn.GRU, fp32, default settings, 1,000 a batch": (False, False, "fp32", False, 1000),
    "fast GRU, torch-op step, fp32, CPU settings, 1,000 a batch": (True, False, "fp32", True, 1000),
    "fast GRU, torch-op step, bf16, CPU settings, 1,000 a batch": (True, False, "bf16", True, 1000),
    "fused C step, fp32, CPU settings, 1,000 a batch": (True, True, "fp32", True, 1000),
    "fused C step, fp32, CPU settings, all at once": (True, True, "fp32", True, 0),
    "fused C step, bf16, CPU settings, 1,000 a batch": (True, True, "bf16", True, 1000),
    "fused C step, bf16, CPU settings, all at once": (True, True, "bf16", True, 0),
}
# name -> (mask, --inpaint, particles, sampling), on --inpaint-digits digits, fused C step, fp32,
# about 1,000 rows (digits x particles) a batch
INPAINT_ROWS = {
    "center:14, blind, greedy, K = 1": ("center:14", "blind", 1, "greedy"),
    "center:14, blind, bernoulli, K = 32": ("center:14", "blind", 32, "bernoulli"),
    "center:14, SMC sample, bernoulli, K = 32": ("center:14", "sample", 32, "bernoulli"),
}


def load(args: argparse.Namespace) -> tuple[NextPixelModel, torch.Tensor, torch.Tensor | None, str]:
    """The model, the digits, their labels (for a label-conditioned model) and a description."""
    device = torch.device("cpu")
    if args.exp_name:
        model, _ = load_model(ExperimentPaths.of(args.exp_dir, args.exp_name).checkpoint, device)
        what = f"experiment {args.exp_name}"
    else:
        torch.manual_seed(0)
        model, what = NextPixelModel(ModelConfig(hidden_size=128)).eval(), "untrained GRU-128"
    try:
        digits, labels = load_test_digits(DataConfig(data_dir=args.data_dir))
        source = "MNIST test digits"
    except Exception:
        digits = torch.bernoulli(torch.full((args.digits, NUM_PIXELS), 0.2)).to(torch.uint8)
        labels, source = torch.arange(args.digits) % 10, "random digits"
    labels = labels[: args.digits] if model.config.num_classes else None
    return model, digits[: args.digits], labels, f"{what}, {min(len(digits), args.digits)} {source}"


def worker(args: argparse.Namespace) -> None:
    """Time one row in this process; save its completions to --out; print JSON."""
    if args.worker in INPAINT_ROWS:
        return inpaint_worker(args)
    fast, fused, precision, cpu_settings, batch_size = ROWS[args.worker]
    if cpu_settings:
        configure_cpu_math()
    model, digits, labels, _ = load(args)
    model.fast_gru, model.fused_step = fast, fused
    batch_size = batch_size or len(digits)

    def run() -> torch.Tensor:
        chunks = []
        for start in range(0, len(digits), batch_size):
            part = slice(start, start + batch_size)
            given = None if labels is None else labels[part]
            chunks.append(complete(model, digits[part], args.mask_pixels, labels=given, precision=precision))
        return torch.cat([c.completed[:, 0] for c in chunks])

    complete(model, digits[:8], args.mask_pixels, labels=None if labels is None else labels[:8])  # warm-up
    start = time.perf_counter()
    completed = run()
    seconds = time.perf_counter() - start
    torch.save(completed, args.out)
    print(json.dumps({"seconds": seconds}))


def inpaint_worker(args: argparse.Namespace) -> None:
    spec, inpaint, particles, sampling = INPAINT_ROWS[args.worker]
    configure_cpu_math()
    model, digits, labels, _ = load(args)
    digits = digits[: args.inpaint_digits]
    labels = None if labels is None else labels[: args.inpaint_digits]
    hidden = parse_mask(spec)
    options = dict(hidden=hidden, sampling=sampling, samples=particles, inpaint=inpaint, labels=labels)
    complete(model, digits[:8], **{**options, "labels": None if labels is None else labels[:8]})  # warm-up
    generator = torch.Generator().manual_seed(0)
    step = max(1, 1000 // particles)  # about 1,000 rows a batch, as evaluate.py does
    start = time.perf_counter()
    completed = [
        complete(
            model, digits[i : i + step], generator=generator, **{**options, "labels": _part(labels, i, step)}
        )
        for i in range(0, len(digits), step)
    ]
    seconds = time.perf_counter() - start
    torch.save(torch.cat([c.completed[:, 0] for c in completed]), args.out)
    print(json.dumps({"seconds": seconds}))


def _part(labels: torch.Tensor | None, start: int, size: int) -> torch.Tensor | None:
    return None if labels is None else labels[start : start + size]


@torch.no_grad()
def naive_complete(model: NextPixelModel, pixels: torch.Tensor, mask_pixels: int, labels) -> torch.Tensor:
    """The reference: feed the whole canvas again for every generated pixel."""
    canvas = pixels.float().clone()
    for t in range(NUM_PIXELS - mask_pixels, NUM_PIXELS):
        logits = model.teacher_forced_logits(canvas[:, : t + 1], labels)  # the input for step t is pixel t-1
        canvas[:, t] = (logits[:, t] > 0).float()
    return canvas


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--exp-name", default=None, help="use this experiment's model (else a fresh GRU-128)")
    parser.add_argument("--exp-dir", default="experiments", help="where experiment folders live")
    parser.add_argument("--data-dir", default=None, help="MNIST folder (else random digits)")
    parser.add_argument("--digits", type=int, default=10000, help="digits to complete")
    parser.add_argument("--mask-pixels", type=int, default=284, help="pixels generated per digit")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median is reported)")
    parser.add_argument(
        "--naive-digits", type=int, default=5, help="digits checked against the naive rollout"
    )
    parser.add_argument(
        "--inpaint-digits", type=int, default=1000, help="digits for the in-painting rows (0: skip them)"
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    return parser.parse_args()


def run_rows(args: argparse.Namespace, n: int, rows: list[str]) -> tuple[dict, dict]:
    """Each row's times (one per round) and its last completions, each run in a fresh worker."""
    times: dict[str, list[float]] = {row: [] for row in rows}
    completions: dict[str, torch.Tensor] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for i, row in enumerate(rows):
                out = str(Path(tmp) / f"{i}.pt")
                command = [sys.executable, __file__, "--worker", row, "--out", out, "--digits", str(n)]
                command += ["--mask-pixels", str(args.mask_pixels), "--exp-dir", args.exp_dir]
                command += ["--inpaint-digits", str(args.inpaint_digits)]
                command += ["--exp-name", args.exp_name] if args.exp_name else []
                command += ["--data-dir", args.data_dir] if args.data_dir else []
                result = subprocess.run(command, check=True, capture_output=True, text=True)
                times[row].append(json.loads(result.stdout)["seconds"])
                completions[row] = torch.load(out, weights_only=True)
    return times, completions


def print_tables(args: argparse.Namespace, n: int, times: dict, completions: dict) -> None:
    """The completion table (against the before row) and, when timed, the in-painting table."""
    mask = args.mask_pixels
    before = next(iter(ROWS))
    reference = statistics.median(times[before])
    print(f"| cpu: completing {n:,} digits, greedy | seconds | digits/s | vs before | pixels as before |")
    print("|---|---:|---:|---:|---:|")
    for row in ROWS:
        median = statistics.median(times[row])
        agree = (completions[row][:, -mask:] == completions[before][:, -mask:]).float().mean().item()
        print(f"| {row} | {median:.2f} | {n / median:,.0f} | {reference / median:.2f} | {agree:.4%} |")
    if args.inpaint_digits:
        count = min(args.inpaint_digits, n)
        blind = statistics.median(times[next(iter(INPAINT_ROWS))])
        head = f"cpu: in-painting {count:,} digits (fused C step, fp32)"
        print(f"\n| {head} | seconds | digits/s | vs blind |")
        print("|---|---:|---:|---:|")
        for row in INPAINT_ROWS:
            median = statistics.median(times[row])
            print(f"| {row} | {median:.2f} | {count / median:,.0f} | {blind / median:.2f} |")


def main() -> None:
    args = parse_args()
    if args.worker:
        return worker(args)
    model, digits, labels, what = load(args)
    n, mask = len(digits), args.mask_pixels
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {what}, {mask} generated")
    print(f"the fused step: {native.kernel_status()}\n")
    rows = list(ROWS) + (list(INPAINT_ROWS) if args.inpaint_digits else [])
    times, completions = run_rows(args, n, rows)
    print_tables(args, n, times, completions)

    configure_cpu_math()
    few = digits[: args.naive_digits]
    given = None if labels is None else labels[: args.naive_digits]
    naive = naive_complete(model, few, mask, given).to(torch.uint8)
    agree = (naive == complete(model, few, mask, labels=given).completed[:, 0]).float().mean().item()
    print(
        f"\nnaive (prefix re-run every step) and batched fast-GRU completions agree on {agree:.4%} of pixels"
    )


if __name__ == "__main__":
    main()
