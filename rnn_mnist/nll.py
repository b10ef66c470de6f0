"""A checkpoint's exact test likelihood: NLL in nats per digit and in bits/dim, with its standard error.

    python -m rnn_mnist.nll --exp-dir pretrained --exp-name fast --data-dir ../shared/mnist
    python -m rnn_mnist.nll --exp-dir pretrained --exp-name fast --binarize static   # other test digits
    python -m rnn_mnist.nll --exp-dir pretrained --exp-name fast-label --marginal    # -log p(image)
    python -m rnn_mnist.nll --exp-name gru-128 --num-digits 1000 --out plots/gru-128-nll.json

Each digit's NLL is the sum of its 784 teacher-forced terms -log p(x_t | x_<t) (one pass,
rnn_mnist/likelihood.py): exact, nothing is sampled. The figure is their mean over the test digits,
beside its standard error (their standard deviation / sqrt(N)); bits/dim is nats / (784 ln 2). The
test digits are binarised as the model was trained (the checkpoint's data config) unless
--binarize, --threshold or --data-seed ask for another binarisation of them. A label-conditioned
model is scored on -log p(image | its true label), or with --marginal on -log p(image), the mean of
its ten class likelihoods (a uniform prior): the figure an unconditioned model's compares with.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any

import torch

from rnn_mnist.checkpoint import (
    ExperimentPaths,
    atomic_write,
    check_writable_folder,
    json_bytes,
    weights_sha256,
)
from rnn_mnist.cli import file_path, fraction, positive_int, rng_seed, run_cli
from rnn_mnist.config import device_option, exp_dir_option
from rnn_mnist.data import (
    BINARIZATIONS,
    DataConfig,
    binarization_name,
    load_test_digits,
    require_labels,
    test_set_note,
)
from rnn_mnist.errors import RnnMnistError
from rnn_mnist.evaluation import load_model
from rnn_mnist.likelihood import (
    TEACHER_FORCED_BATCH,
    bits_per_dim,
    class_log_likelihoods,
    standard_error,
    teacher_forced_nll,
)
from rnn_mnist.mnist_files import DATA_ENV_VAR
from rnn_mnist.models import NextPixelModel
from rnn_mnist.options import Option, option, options_of, when
from rnn_mnist.parsers import command_parser, parse_command_flags, refuse_ignored
from rnn_mnist.progress import progress
from rnn_mnist.runtime import configure_cpu_math, resolve_device

PROG = "python -m rnn_mnist.nll"
# Conditions on what the checkpoint says ("binarisation": the one the digits get; "conditioned":
# whether the model is told the label), checked once it is read (parsers.refuse_ignored).
THRESHOLD_ONLY = when(
    "binarisation", "threshold", says="{flags} sets the threshold of --binarize threshold, not of {value}"
)
DRAWN_ONLY = when(
    "binarisation",
    "static",
    "dynamic",
    says="{flags} seeds a Bernoulli draw; test digits binarised by {value} draw none: drop {them}",
)
CONDITIONED_ONLY = when(
    "conditioned",
    says="{flags} averages over the classes a label-conditioned model is told; this model is told none, "
    "and its NLL is already -log p(image): drop {them}",
)


def digit_count(text: str) -> int | None:
    """The argparse type of --num-digits: a count of digits, or ``all`` (None)."""
    if text == "all":
        return None
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a number of digits (at least 1) or all, got {text!r}"
        ) from None


digit_count.__name__ = "a number of digits or all"


@dataclass
class NllOptions:
    """The likelihood command's options."""

    exp_name: str = option(
        MISSING, "--exp-name", help="experiment to score (its checkpoint.ckpt)", group="main"
    )
    exp_dir: str = exp_dir_option("main")
    data_dir: str | None = option(
        None, "--data-dir", help=f"folder holding MNIST/raw; unset: ${DATA_ENV_VAR}, else the training one",
        group="main",
    )  # fmt: skip
    num_digits: int | None = option(
        None, "--num-digits", kind=digit_count, metavar="N|all", group="main",
        help="score the first N test digits, or all (unset: all 10,000)",
    )  # fmt: skip
    binarize: str | None = option(
        None, "--binarize", choices=BINARIZATIONS, group="test digits",
        help="binarise the test digits this way (unset: as the model was trained); dynamic test digits "
        "are one fixed Bernoulli draw, the same as static ones; larochelle: binarized_mnist_test.amat",
    )  # fmt: skip
    threshold: float | None = option(
        None, "--threshold", kind=fraction, group="test digits", only=THRESHOLD_ONLY,
        help="grey level for --binarize threshold (unset: the training one, else 0.1)",
    )  # fmt: skip
    data_seed: int | None = option(
        None, "--data-seed", kind=rng_seed, group="test digits", only=DRAWN_ONLY,
        help="seeds the Bernoulli draw of static / dynamic test digits (unset: the training one)",
    )  # fmt: skip
    marginal: bool = option(
        False, "--marginal", group="main", only=CONDITIONED_ONLY,
        help="label-conditioned models: score -log p(image) = -log mean_c p(image | c) (ten passes), "
        "not -log p(image | true label)",
    )  # fmt: skip
    batch_size: int = option(
        TEACHER_FORCED_BATCH, "--batch-size", kind=positive_int, help="digits per teacher-forced pass",
        group="main",
    )  # fmt: skip
    device: str = device_option("main")
    out: str | None = option(
        None, "--out", kind=file_path(".json"), metavar="PATH", group="main",
        help="also write the figures to this .json file (unset: print them only)",
    )  # fmt: skip


NLL_GROUPS: dict[str, str | None] = {"main": None, "test digits": "which binarisation of the test digits"}


def nll_options() -> list[Option]:
    """Every option of the likelihood command."""
    return options_of(NllOptions)


def build_parser() -> argparse.ArgumentParser:
    return command_parser(PROG, __doc__.split("\n\n")[0], nll_options(), NLL_GROUPS)


def load_experiment_model(exp_dir: str, exp_name: str, device: torch.device) -> tuple[NextPixelModel, dict]:
    """An experiment's next-pixel model, in eval mode on ``device``, and its checkpoint."""
    path = ExperimentPaths.of(exp_dir, exp_name).checkpoint
    if not path.exists():
        raise RnnMnistError(
            f"no experiment {exp_name!r} in {exp_dir}/ (no {path}); train it first with train.py"
        )
    return load_model(path, device)


def test_data_config(checkpoint: dict[str, Any], options: NllOptions) -> DataConfig:
    """The checkpoint's data config, reading MNIST from --data-dir (else $RNN_MNIST_DATA, else the
    training folder), with the binarisation the options ask for in place of the training one."""
    saved = checkpoint.get("data_config", {})
    data_dir = options.data_dir or os.environ.get(DATA_ENV_VAR) or saved.get("data_dir")
    asked = {"binarize": options.binarize, "threshold": options.threshold, "data_seed": options.data_seed}
    return DataConfig.from_dict(
        {**saved, "data_dir": data_dir, **{k: v for k, v in asked.items() if v is not None}}
    )


def describe_binarisation(config: DataConfig) -> str:
    """``threshold-0.1``; ``static (data seed 0)``; dynamic says its test digits are static's."""
    name = binarization_name(config.binarize, config.threshold)
    if config.binarize == "threshold":
        return name
    if config.binarize == "larochelle":
        return f"{name} (Larochelle & Murray's static binarisation, from the .amat files)"
    same = ", the same test digits as static" if config.binarize == "dynamic" else ""
    return f"{name} (one Bernoulli draw, data seed {config.data_seed}{same})"


def digit_nlls(
    model: NextPixelModel,
    pixels: torch.Tensor,
    labels: torch.Tensor | None,
    marginal: bool = False,
    batch_size: int = TEACHER_FORCED_BATCH,
    show_progress: bool = True,
) -> torch.Tensor:
    """Each digit's exact NLL (N,) float64, in nats: -log p(image), -log p(image | label) for a
    label-conditioned model, or with ``marginal`` -log of the mean of its class likelihoods."""
    conditioned = model.config.num_classes > 0
    parts = []
    for start in progress(range(0, len(pixels), batch_size), "test NLL", unit="batch", enabled=show_progress):
        batch = slice(start, start + batch_size)
        if marginal:
            log_likelihood = class_log_likelihoods(model, pixels[batch], batch_size)  # (B, classes)
            parts.append(math.log(log_likelihood.shape[1]) - log_likelihood.logsumexp(dim=1))
        else:
            needed = "-log p(image | label) (--marginal needs none)"
            given = require_labels(labels, needed)[batch] if conditioned else None
            parts.append(teacher_forced_nll(model, pixels[batch], given, batch_size=batch_size).double())
    return torch.cat(parts)


def likelihood_figures(nll: torch.Tensor) -> dict[str, float | None]:
    """The mean NLL (nats and bits/dim) of digits' NLLs (N,), and its standard error: their standard
    deviation (N - 1 in the denominator) / sqrt(N); None for a single digit."""
    nll = nll.double()
    mean = float(nll.mean())
    error = standard_error(len(nll), float(nll.sum()), float(nll.square().sum()))
    return {
        "nll_nats": mean,
        "nll_nats_standard_error": error,
        "bits_per_dim": bits_per_dim(mean),
        "bits_per_dim_standard_error": None if error is None else bits_per_dim(error),
    }


def measure(options: NllOptions, typed: set[str], show_progress: bool = True) -> dict[str, Any]:
    """Load the checkpoint and its test digits, score every digit, return the figures."""
    if options.out is not None:
        check_writable_folder(Path(options.out).parent, "--out")
    device = resolve_device(options.device)
    configure_cpu_math()
    model, checkpoint = load_experiment_model(options.exp_dir, options.exp_name, device)
    conditioned = model.config.num_classes > 0
    data_config = test_data_config(checkpoint, options)
    facts = {"binarisation": data_config.binarize, "conditioned": conditioned}
    refuse_ignored(nll_options(), vars(options), typed, facts)
    pixels, labels = load_test_digits(data_config)
    if options.num_digits is not None and options.num_digits > len(pixels):
        raise RnnMnistError(f"--num-digits {options.num_digits}: there are only {len(pixels):,} test digits")
    count = options.num_digits or len(pixels)
    started = time.perf_counter()
    labels = None if labels is None else labels[:count]
    nll = digit_nlls(model, pixels[:count], labels, options.marginal, options.batch_size, show_progress)
    seconds = time.perf_counter() - started
    trained = DataConfig.from_dict(checkpoint.get("data_config", {}))
    return {
        "experiment": options.exp_name,
        "checkpoint_epoch": checkpoint["epoch"],
        "checkpoint_sha256": weights_sha256(checkpoint["model_state"]),
        "likelihood": "-log p(image)" if not conditioned or options.marginal else "-log p(image | label)",
        **likelihood_figures(nll),
        "num_digits": count,
        "test_digits": f"the first {count:,} of {len(pixels):,}" if count < len(pixels) else f"all {count:,}",
        "binarization": describe_binarisation(data_config),
        "trained_binarization": describe_binarisation(trained),
        "test_set": test_set_note(data_config),
        "seconds": seconds,
        "device": str(device),
    }


def report(metrics: dict[str, Any]) -> str:
    """The figures, for the terminal."""
    error, bits_error = metrics["nll_nats_standard_error"], metrics["bits_per_dim_standard_error"]
    nats = f"{metrics['nll_nats']:.2f}" + ("" if error is None else f" ± {error:.2f}")
    bits = f"{metrics['bits_per_dim']:.4f}" + ("" if bits_error is None else f" ± {bits_error:.4f}")
    same = metrics["binarization"] == metrics["trained_binarization"]
    trained = " as in training" if same else f"; the model was trained on {metrics['trained_binarization']}"
    return "\n".join(
        [
            f"{metrics['experiment']} (epoch {metrics['checkpoint_epoch']}, weights "
            f"{metrics['checkpoint_sha256'][:12]}): test NLL {nats} nats per digit = {bits} bits/dim",
            f"{metrics['likelihood']}, exact (784 teacher-forced terms a digit); "
            + (
                "± one standard error over the digits"
                if error is not None
                else "one digit: no standard error"
            ),
            f"{metrics['test_digits']} test digits, binarised {metrics['binarization']}{trained}; "
            f"{metrics['seconds']:.1f} s on {metrics['device']}",
            *([metrics["test_set"]] if metrics.get("test_set") else []),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    flags, typed = parse_command_flags(build_parser(), nll_options(), argv)
    options = NllOptions(**flags)

    def run() -> None:
        metrics = measure(options, typed)
        print(report(metrics))
        if options.out is not None:
            atomic_write(Path(options.out), lambda f: f.write(json_bytes(metrics)))
            print(f"wrote {options.out}")

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
