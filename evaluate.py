"""Complete masked test digits with a trained model, pixel by pixel, and show it.

Usage:
    python evaluate.py --exp-name gru-128
    python evaluate.py --exp-name gru-128 --indices 3705,3217 --sampling bernoulli --samples 4
    python evaluate.py --exp-name gru-128 --mask-pixels 392 --digit 7 --num-digits 8
    python evaluate.py --exp-name gru-128 --num-digits 10000 --no-gifs       # metrics only
    python evaluate.py --exp-name gru-label --mask-pixels 784 --per-class 10  # 10 x 10 generated digits
    python evaluate.py --exp-name gru-label --mask-pixels 784 --per-class 10 --sampling bernoulli \
        --best-of 8 --best-by label-posterior  # keep the draw the model itself reads as its class
    python evaluate.py --exp-name gru-128 --mask center:14 --inpaint sample --particles 32 \
        --sampling bernoulli  # in-paint a hole, honouring the pixels after it (sequential Monte Carlo)
    python evaluate.py --exp-name smnist                 # a --task classify experiment: accuracy, confusion
    python evaluate.py --exp-name gru-label --classify --against smnist  # the generative model, read

Writes to plots/<exp-name>/: one GIF triptych per digit and sample (given | completion | ground
truth), completions.png, completions.npz and metrics.json; for a classify experiment or --classify,
metrics.json, confusion.png, misread.png and accuracy-by-pixels.png (rnn_mnist/reading.py). The
model and the test digits' binarisation come from the experiment's checkpoint; no architecture
flags are needed.
"""

from __future__ import annotations

import argparse
import sys

from rnn_mnist.cli import (
    DefaultsHelpFormatter,
    ShortErrorParser,
    bounded,
    positive_float,
    positive_int,
    refuse_contradictions,
    rng_seed,
    run_cli,
    typed_flags,
)
from rnn_mnist.data import DATA_ENV_VAR, NUM_PIXELS
from rnn_mnist.evaluation import EvalOptions, evaluate_experiment, summary
from rnn_mnist.masks import MASK_KINDS
from rnn_mnist.reading import is_classifier_experiment, read_digits, reading_summary
from rnn_mnist.rollout import BEST_BY, INPAINTS, SAMPLINGS
from rnn_mnist.runtime import DEVICES, PRECISIONS


def index_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated test indices, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one index")
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"test indices are 0 or more, got {text!r}")
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:  # each would be completed and counted in every metric more than once
        raise argparse.ArgumentTypeError(f"{', '.join(map(str, repeated))} given more than once")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = ShortErrorParser(description=__doc__.split("\n\n")[0], formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--exp-name", required=True, help="experiment to evaluate (its checkpoint.ckpt)")
    parser.add_argument("--exp-dir", default="experiments", help="where experiment folders live")
    parser.add_argument("--out-dir", default=None, help="output folder; unset: plots/<exp-name>")
    parser.add_argument(
        "--data-dir",
        default=None,
        help=f"folder holding MNIST/raw; unset: ${DATA_ENV_VAR}, else the training one",
    )
    parser.add_argument(
        "--mask-pixels",
        type=bounded(int, 1, NUM_PIXELS),
        default=284,
        help=f"hide the last N pixels (1..{NUM_PIXELS}; {NUM_PIXELS}: blank); shorthand for --mask suffix:N",
    )
    parser.add_argument(
        "--mask",
        default=None,
        metavar="SPEC",
        help=f"hide any region: KIND:ARGS with KIND one of {', '.join(MASK_KINDS)}, e.g. center:14, "
        "rows:10-17, cols:3-5, box:R0,C0,R1,C1 (inclusive), left:N, right:N, random:0.5 (drawn with --seed)",
    )
    parser.add_argument(
        "--inpaint",
        choices=INPAINTS,
        default="blind",
        help="blind: draw the hole from the pixels before it; sample / best: sequential Monte Carlo with "
        "--particles, weighing each fill by the visible pixels after it, then keep one particle per digit "
        "drawn by weight / the most likely one",
    )
    parser.add_argument(
        "--particles", type=positive_int, default=1, help="particles per digit for --inpaint sample / best"
    )
    parser.add_argument(
        "--sampling",
        choices=SAMPLINGS,
        default="greedy",
        help="feedback: greedy (p > 0.5), bernoulli (draw from p), mean (feed p itself)",
    )
    parser.add_argument("--temperature", type=positive_float, default=1.0, help="divides the logits")
    parser.add_argument("--samples", type=positive_int, default=1, help="completions per digit")
    parser.add_argument(
        "--best-of",
        type=positive_int,
        default=None,
        help="draw K completions per digit and keep one, chosen by --best-by (use with bernoulli)",
    )
    parser.add_argument(
        "--best-by",
        choices=BEST_BY,
        default="likelihood",
        help="likelihood: the completion the model finds most likely; label-posterior (label-conditioned "
        "models): the one from which the model itself most surely infers the requested class, p(label | "
        "image) by Bayes' rule over its 10 class likelihoods (the judge is never consulted)",
    )
    parser.add_argument(
        "--seed", type=rng_seed, default=0, help="seeds the choice of digits and Bernoulli draws"
    )
    choice = parser.add_argument_group("which test digits")
    choice.add_argument("--indices", type=index_list, default=None, help="test-set indices, e.g. 3705,3217")
    choice.add_argument("--num-digits", type=positive_int, default=16, help="how many, chosen at random")
    choice.add_argument(
        "--per-class", type=positive_int, default=None, help="N digits of every class, a grid row per class"
    )
    choice.add_argument(
        "--digit", type=bounded(int, 0, 9), default=None, help="only digits of this class (0..9)"
    )
    parser.add_argument("--device", choices=DEVICES, default="auto", help="auto: cuda, then mps, then cpu")
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=1000,
        help="digits completed together (with --particles K: batch-size / K digits, K particles each)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="bf16: the rollout's GEMMs in bf16 (state and probabilities fp32); NLLs are always fp32",
    )
    parser.add_argument("--no-gifs", dest="gifs", action="store_false", help="skip the GIFs (large runs)")
    judging = parser.add_argument_group("the digit judge (class agreement)")
    judging.add_argument(
        "--judge",
        dest="judge_path",
        default=None,
        metavar="PATH",
        help="a judge made by `python -m rnn_mnist.judge --out PATH`; unset: the shipped one "
        "(rnn_mnist/weights/judge.pt)",
    )
    judging.add_argument("--no-judge", dest="judge", action="store_false", help="skip class agreement")
    reading = parser.add_argument_group("reading digits (a --task classify experiment, or --classify)")
    reading.add_argument(
        "--classify",
        action="store_true",
        help="read a label-conditioned model as a classifier: p(class | image) by Bayes' rule from ten "
        "teacher-forced passes, test accuracy, and accuracy by pixels read",
    )
    reading.add_argument(
        "--against",
        default=None,
        metavar="EXP",
        help="with --classify: draw this classify experiment's accuracy by pixels read on the same axes",
    )
    reading.add_argument(
        "--test-digits",
        type=positive_int,
        default=None,
        help="read only the first N test digits (unset: all)",
    )
    return parser


def contradictions(args: argparse.Namespace, typed: set[str]) -> list[tuple[bool, str]]:
    """Flags that the other flags would ignore or contradict: (it is so, why) for each case."""
    deterministic = args.sampling != "bernoulli"  # greedy and mean draw the same completion every time
    completing = sorted(typed & COMPLETION_ONLY)  # ignored by --classify
    return [
        (
            args.classify and bool(completing),
            f"{', '.join(_flag_names(completing))} only change completions; --classify reads whole "
            "test digits: drop them",
        ),
        (
            "per_class" in typed and "digit" in typed,
            "--per-class draws N digits of every class and --digit only one class: give one of them",
        ),
        (
            "indices" in typed and "per_class" in typed,
            "--indices and --per-class both choose the digits: give one of them",
        ),
        (
            "num_digits" in typed and bool(typed & {"indices", "per_class"}),
            "--num-digits counts random digits; --indices and --per-class choose their own number",
        ),
        (
            "temperature" in typed and args.sampling == "greedy",
            "--temperature does not change greedy completions (p > 0.5 whatever it is); "
            "use it with --sampling bernoulli or mean",
        ),
        (
            args.best_of is not None and deterministic,
            f"--best-of K chooses among K draws, but --sampling {args.sampling} draws the same "
            "completion K times: use --sampling bernoulli",
        ),
        (
            args.samples > 1 and deterministic,
            f"--samples {args.samples} with --sampling {args.sampling} gives {args.samples} identical "
            "completions: use --sampling bernoulli",
        ),
        (
            args.best_of is not None and args.samples > 1,
            "--best-of keeps one completion per digit; it does not combine with --samples",
        ),
        (
            "best_by" in typed and args.best_of is None,
            "--best-by chooses among --best-of K samples; give --best-of too",
        ),
        (
            args.judge_path is not None and not args.judge,
            "--judge names the judge to use and --no-judge skips it: give one of them",
        ),
        (
            args.mask is not None and "mask_pixels" in typed,
            "--mask-pixels N is --mask suffix:N: give one of them",
        ),
        (
            args.against is not None and not args.classify,
            "--against adds a classifier's curve to --classify's: give --classify too",
        ),
    ]


# Flags that only the completion of masked digits reads (rnn_mnist/evaluation.py), never --classify
# (rnn_mnist/reading.py reads --test-digits, --batch-size and --device).
COMPLETION_ONLY = {
    "mask_pixels", "mask", "inpaint", "particles", "sampling", "temperature", "samples", "best_of",
    "best_by", "seed", "indices", "num_digits", "per_class", "digit", "precision", "gifs", "judge_path",
    "judge",
}  # fmt: skip


def _flag_names(dests: list[str]) -> list[str]:
    """Destinations as the flags that set them (``gifs`` is typed as --no-gifs)."""
    negated = {"gifs": "--no-gifs", "judge": "--no-judge", "judge_path": "--judge"}
    return [negated.get(d, "--" + d.replace("_", "-")) for d in dests]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    refuse_contradictions(parser, contradictions(args, typed_flags(parser, argv)))
    options = EvalOptions(**vars(args))

    def run() -> None:
        if options.classify or is_classifier_experiment(options.exp_dir, options.exp_name):
            print(reading_summary(read_digits(options)))
        else:
            print(summary(evaluate_experiment(options)))

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
