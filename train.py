"""Train a recurrent model on MNIST: a next-pixel model (teacher forcing), or a sequential-MNIST classifier.

Usage:
    python train.py --exp-name gru-128 --hidden 128
    python train.py --exp-name fast --config fast         # a recipe: configs/fast.toml
    python train.py --exp-name pilot --config fast --epochs 1 --train-subset 5000   # typed flags win
    python train.py --exp-name smnist --config smnist     # --task classify: name the digit
    python train.py --exp-name psmnist --config psmnist   # the same on permuted pixels
    python train.py --exp-name gru-128 --hidden 128 --data-dir ../shared/mnist   # offline
    python train.py --exp-name gru-128 --epochs 20 --resume                      # continue
    python train.py --exp-name gru-128 --epochs 25 --resume --lr 1e-3            # at a lower lr

Writes experiments/<exp-name>/checkpoint.ckpt and metrics.pkl (plus metrics.json and train.log)
after every epoch, atomically, and best.ckpt, the best validation epoch's checkpoint. Ctrl-C keeps
the last complete epoch; --resume picks it up.
"""

from __future__ import annotations

import argparse
import sys

from rnn_mnist.cli import run_cli
from rnn_mnist.parsers import parse_train_flags, train_parser
from rnn_mnist.training import train_experiment


def build_parser() -> argparse.ArgumentParser:
    """Every flag, built from the options declared on the config fields (rnn_mnist/config.py)."""
    return train_parser(__doc__.split("\n\n")[0])


def main(argv: list[str] | None = None) -> int:
    flags, typed = parse_train_flags(build_parser(), argv)
    return run_cli(lambda: train_experiment(flags, typed=typed))


if __name__ == "__main__":
    sys.exit(main())
