"""In-painting quality: blind filling against sequential Monte Carlo, for several masks and K.

Usage:
    python bench/inpainting.py --exp-dir pretrained --exp-name fast --data-dir ../shared/mnist
    python bench/inpainting.py --exp-dir pretrained --exp-name fast --digits 100 --particles 1,8

Every row runs evaluate.py's own routine (rnn_mnist.evaluation.evaluate_experiment, no GIFs) on
the same --digits test digits (seeded), with Bernoulli draws, and prints masked pixel accuracy,
masked NLL (teacher forced, the same for every row of a mask), class agreement with the shipped
judge beside its floor (visible pixels only) and ceiling (true digit), and seconds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rnn_mnist.config import EvalOptions  # noqa: E402
from rnn_mnist.evaluation import evaluate_experiment  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--exp-name", required=True, help="the experiment whose model in-paints")
    parser.add_argument("--exp-dir", default="experiments", help="where experiment folders live")
    parser.add_argument("--data-dir", default=None, help="folder holding MNIST/raw")
    parser.add_argument("--digits", type=int, default=1000, help="test digits per row")
    parser.add_argument(
        "--masks", default="center:14,rows:10-17,random:0.5", help="mask specs, comma-separated"
    )
    parser.add_argument("--particles", default="8,32,128", help="K for the SMC rows")
    parser.add_argument("--seed", type=int, default=0, help="the digits, the random mask and the draws")
    args = parser.parse_args()
    masks = _join_specs(args.masks.split(","))
    particles = [int(k) for k in args.particles.split(",")]
    runs = [("blind", 1)] + [(inpaint, k) for k in particles for inpaint in ("sample", "best")]
    print(f"{args.exp_dir}/{args.exp_name}, {args.digits} test digits, Bernoulli draws, seed {args.seed}\n")
    print("| mask | in-painting | K | masked pixel acc. | agreement | floor / ceiling | mean ESS | seconds |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as out:
        for mask in masks:
            for inpaint, k in runs:
                options = EvalOptions(
                    exp_name=args.exp_name,
                    exp_dir=args.exp_dir,
                    out_dir=str(Path(out) / "eval"),
                    data_dir=args.data_dir,
                    mask=mask,
                    inpaint=inpaint,
                    particles=k,
                    sampling="bernoulli",
                    num_digits=args.digits,
                    seed=args.seed,
                    gifs=False,
                )
                m = evaluate_experiment(options, show_progress=False)
                ess = f"{m['mean_effective_sample_size']:.1f}" if "mean_effective_sample_size" in m else "-"
                accuracy, agreement = m["masked_pixel_accuracy"], m["class_agreement"]
                print(
                    f"| {mask} | {inpaint} | {k} | {accuracy:.4f} | {agreement:.3f} "
                    f"| {m['class_agreement_prefix_only']:.3f} / {m['class_agreement_ground_truth']:.3f} "
                    f"| {ess} | {m['rollout_seconds']:.1f} |",
                    flush=True,
                )


def _join_specs(parts: list[str]) -> list[str]:
    """Split "center:14,rows:10-17,box:1,2,3,4" into specs: a part without ':' belongs to the last."""
    specs: list[str] = []
    for part in parts:
        if ":" in part or not specs:
            specs.append(part)
        else:
            specs[-1] += "," + part
    return specs


if __name__ == "__main__":
    main()
