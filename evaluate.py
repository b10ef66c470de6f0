"""Complete masked test digits with a trained model, pixel by pixel, and show it.

Usage:
    python evaluate.py --exp-dir pretrained --exp-name fast     # a shipped model (pretrained/fast)
    python evaluate.py --exp-name gru-128                       # one you trained (experiments/gru-128)
    python evaluate.py --exp-name gru-128 --checkpoint best     # its best validation epoch (best.ckpt)
    python evaluate.py --exp-dir pretrained --exp-name fast --indices 3705,3217 --sampling bernoulli \
        --samples 4
    python evaluate.py --exp-dir pretrained --exp-name fast --mask-pixels 392 --digit 7 --num-digits 8
    python evaluate.py --exp-dir pretrained --exp-name fast --num-digits 10000 --no-gifs   # metrics only
    python evaluate.py --exp-dir pretrained --exp-name fast-label --mask-pixels 784 --per-class 10 \
        --sampling bernoulli --best-of 8 --best-by label-posterior  # keep the draw read as its class
    python evaluate.py --exp-dir pretrained --exp-name fast --mask center:14 --inpaint sample \
        --particles 32 --sampling bernoulli  # in-paint a hole, honouring the pixels after it (SMC)
    python evaluate.py --exp-name smnist                 # a --task classify experiment: accuracy, confusion
    python evaluate.py --exp-dir pretrained --exp-name fast-label --classify --against experiments/smnist

Writes to plots/<exp-name>/: one GIF triptych per digit and sample (given | completion | ground
truth), completions.png, completions.npz and metrics.json; for a classify experiment (or --classify,
into plots/<exp-name>-classify/), metrics.json, confusion.png, misread.png and accuracy-by-pixels.png
(rnn_mnist/reading.py). Each evaluation replaces its folder whole, so its files are all of one run. The
model and the test digits' binarisation come from the experiment's checkpoint; no architecture
flags are needed.
"""

from __future__ import annotations

import argparse
import sys

from rnn_mnist.cli import run_cli
from rnn_mnist.evaluation import evaluate_experiment, summary
from rnn_mnist.parsers import evaluate_parser, parse_eval_flags, refuse_flags_the_experiment_ignores
from rnn_mnist.reading import is_classifier_experiment, read_digits, reading_summary


def build_parser() -> argparse.ArgumentParser:
    """Every flag, built from EvalOptions' fields (rnn_mnist/config.py)."""
    return evaluate_parser(__doc__.split("\n\n")[0])


def main(argv: list[str] | None = None) -> int:
    options, typed = parse_eval_flags(build_parser(), argv)

    def run() -> None:
        classifier = not options.classify and is_classifier_experiment(options.exp_dir, options.exp_name)
        refuse_flags_the_experiment_ignores(options, typed, classifier)
        if options.classify or classifier:
            print(reading_summary(read_digits(options)))
        else:
            print(summary(evaluate_experiment(options)))

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
