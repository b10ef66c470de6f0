"""Draw digits from a blank canvas with a trained model, as a PNG grid.

    python -m rnn_mnist.sample --exp-dir pretrained --exp-name fast
    python -m rnn_mnist.sample --exp-dir pretrained --exp-name fast-label             # 10 of every class
    python -m rnn_mnist.sample --exp-dir pretrained --exp-name fast-label --digit 3 --num 16
    python -m rnn_mnist.sample --exp-name gru-128 --temperature 0.8 --seed 1 --out plots/t08.png

Every pixel is drawn from the model's p(x_t | x_<t), fed back, one at a time, by the one rollout
routine (rnn_mnist/rollout.py, every pixel hidden, Bernoulli draws seeded by --seed; the same seed
and --batch-size give the same digits). A label-conditioned model is told which class to draw: a row
of --num digits per class, or --num digits of --digit D. What it prints means something for drawn
digits: the model's NLL of its own draws and, by the shipped digit judge (rnn_mnist/judge.py), the
fraction read as the class asked for (label-conditioned) or which classes were drawn. The
per-epoch pictures of a training run are rnn_mnist/samples.py's.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any

import torch

from rnn_mnist import visualise
from rnn_mnist.checkpoint import atomic_write, check_writable_folder
from rnn_mnist.cli import bounded, file_path, positive_float, positive_int, rng_seed, run_cli
from rnn_mnist.config import device_option, exp_dir_option
from rnn_mnist.data import NUM_PIXELS, DataConfig, binarization_name
from rnn_mnist.judge import DigitJudge, classify, load_judge
from rnn_mnist.models import NextPixelModel
from rnn_mnist.nll import likelihood_figures, load_experiment_model
from rnn_mnist.options import Option, option, options_of, when
from rnn_mnist.parsers import command_parser, parse_command_flags, refuse_ignored
from rnn_mnist.progress import progress
from rnn_mnist.rollout import complete, log_likelihood
from rnn_mnist.runtime import configure_cpu_math, resolve_device

PROG = "python -m rnn_mnist.sample"
DEFAULT_NUM = 64  # an 8 x 8 grid
DEFAULT_PER_CLASS = 10  # a 10 x 10 grid, a row per class
# "conditioned": whether the model is told a label, known once its checkpoint is read.
CONDITIONED_ONLY = when(
    "conditioned",
    says="{flags} chooses the class a label-conditioned model draws; this one was trained without "
    "--condition label and draws digits of every class: drop {them}",
)
JUDGING = when("judge", says="--no-judge skips the judge that {flags} names: give one of them")


@dataclass
class SampleOptions:
    """The sample command's options."""

    exp_name: str = option(
        MISSING, "--exp-name", help="experiment to draw from (its checkpoint.ckpt)", group="main"
    )
    exp_dir: str = exp_dir_option("main")
    num: int | None = option(
        None, "--num", kind=positive_int, metavar="N", group="main",
        help=f"digits to draw, in a square grid; a label-conditioned model without --digit draws N of "
        f"every class, a row each (unset: {DEFAULT_NUM}, or {DEFAULT_PER_CLASS} of every class)",
    )  # fmt: skip
    digit: int | None = option(
        None, "--digit", kind=bounded(int, 0, 9), metavar="D", group="main", only=CONDITIONED_ONLY,
        help="label-conditioned models: draw only digits of this class (0..9)",
    )  # fmt: skip
    temperature: float = option(
        1.0, "--temperature", kind=positive_float, help="divides the logits before each draw", group="main"
    )
    seed: int = option(0, "--seed", kind=rng_seed, help="seeds the Bernoulli draws", group="main")
    out: str | None = option(
        None, "--out", kind=file_path(".png"), metavar="PATH", group="main",
        help="the grid to write (unset: plots/<exp-name>-samples.png)",
    )  # fmt: skip
    batch_size: int = option(
        1000, "--batch-size", kind=positive_int, help="digits drawn together", group="main"
    )
    device: str = device_option("main")
    judge_path: str | None = option(  # None: the shipped judge (rnn_mnist/weights/judge.pt)
        None, "--judge", metavar="PATH", group="judge", only=JUDGING,
        help="a judge made by `python -m rnn_mnist.judge --out PATH`; unset: the shipped one",
    )  # fmt: skip
    judge: bool = option(True, "--no-judge", help="skip the judge's reading of the digits", group="judge")


SAMPLE_GROUPS: dict[str, str | None] = {"main": None, "judge": "the digit judge"}


def sample_options() -> list[Option]:
    """Every option of the sample command."""
    return options_of(SampleOptions)


def build_parser() -> argparse.ArgumentParser:
    return command_parser(PROG, __doc__.split("\n\n")[0], sample_options(), SAMPLE_GROUPS)


def requested(options: SampleOptions, conditioned: bool) -> tuple[int, torch.Tensor | None, int | None]:
    """How many digits to draw, the class asked of each (N,) (None: unconditioned), and the grid's
    columns (None: a square)."""
    if not conditioned:
        return options.num or DEFAULT_NUM, None, None
    if options.digit is not None:
        count = options.num or DEFAULT_NUM
        return count, torch.full((count,), options.digit, dtype=torch.long), None
    per_class = options.num or DEFAULT_PER_CLASS
    return 10 * per_class, torch.arange(10).repeat_interleave(per_class), per_class


def draw(
    model: NextPixelModel,
    count: int,
    labels: torch.Tensor | None,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 1000,
    show_progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` digits (count, 784) uint8 drawn from a blank canvas (told ``labels`` (count,) when
    given), and the model's NLL (count,) of each draw, in nats, under its own p at temperature 1."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    drawn, nll = [], []
    with progress(total=count * NUM_PIXELS, desc="drawing", unit="px", enabled=show_progress) as bar:
        for start in range(0, count, batch_size):
            size = min(batch_size, count - start)
            result = complete(
                model,
                torch.zeros(size, NUM_PIXELS, dtype=torch.uint8),
                NUM_PIXELS,
                "bernoulli",
                temperature=temperature,
                generator=generator,
                labels=None if labels is None else labels[start : start + size],
                on_step=lambda size=size: bar.update(size),
            )
            drawn.append(result.completed[:, 0])
            nll.append(-log_likelihood(result)[:, 0].double())
    return torch.cat(drawn), torch.cat(nll)


def judged(
    judge: DigitJudge, info: dict[str, Any], pixels: torch.Tensor, labels: torch.Tensor | None
) -> dict[str, Any]:
    """The judge's reading of drawn digits (N, 784): which classes it sees, how sure it is, and for
    digits drawn to order (``labels`` (N,)) the fraction read as the class asked for, overall and by
    class. ``info``: the judge's description (load_judge)."""
    probs = classify(judge, pixels)
    predicted = probs.argmax(dim=1)
    reading: dict[str, Any] = {
        "judged_class_histogram": torch.bincount(predicted, minlength=10).tolist(),
        "mean_judge_confidence": float(probs.max(dim=1).values.mean()),
        "judge": {"path": info["path"], "sha256": info["sha256"], "test_accuracy": info["test_accuracy"]},
    }
    if labels is not None:
        hit = (predicted == labels).float()
        reading["judged_as_requested"] = float(hit.mean())
        reading["judged_as_requested_by_class"] = {
            str(c): float(hit[labels == c].mean()) for c in labels.unique().tolist()
        }
    return reading


def _asked(labels: torch.Tensor | None, columns: int | None) -> str:
    """What the model was told to draw, in words."""
    if labels is None:
        return "digits of any class (unconditioned)"
    if columns is None:
        return f"all of class {int(labels[0])}"
    return f"{columns} of every class, a row each"


def sample(options: SampleOptions, typed: set[str], show_progress: bool = True) -> dict[str, Any]:
    """Load the model (and the judge, before any drawing), draw the digits, write the grid; return
    what was drawn and measured."""
    out = Path(options.out or Path("plots") / f"{options.exp_name}-samples.png")
    check_writable_folder(out.parent, "--out")
    device = resolve_device(options.device)
    configure_cpu_math()
    model, checkpoint = load_experiment_model(options.exp_dir, options.exp_name, device)
    conditioned = model.config.num_classes > 0
    refuse_ignored(sample_options(), vars(options), typed, {"conditioned": conditioned})
    # A bad judge file fails now, not after the drawing.
    judge, judge_info = load_judge(options.judge_path) if options.judge else (None, None)
    count, labels, columns = requested(options, conditioned)
    started = time.perf_counter()
    pixels, nll = draw(
        model, count, labels, options.temperature, options.seed, options.batch_size, show_progress
    )
    seconds = time.perf_counter() - started
    grid = visualise.completion_grid(pixels[:, None].numpy(), NUM_PIXELS, columns=columns)
    atomic_write(out, lambda f: f.write(visualise.png_bytes(grid)))
    trained = DataConfig.from_dict(checkpoint.get("data_config", {}))
    figures = likelihood_figures(nll)
    metrics = {
        "experiment": options.exp_name,
        "checkpoint_epoch": checkpoint["epoch"],
        "num": count,
        "asked": _asked(labels, columns),
        "temperature": options.temperature,
        "seed": options.seed,
        "seconds": seconds,
        "device": str(device),
        "draws_nll_nats": figures["nll_nats"],
        "draws_nll_nats_standard_error": figures["nll_nats_standard_error"],
        "trained_binarization": binarization_name(trained.binarize, trained.threshold),
        "grid": [grid.shape[0], grid.shape[1]],
        "out": str(out),
    }
    if judge is not None:
        metrics.update(judged(judge, judge_info, pixels, labels))
    return metrics


def report(metrics: dict[str, Any]) -> str:
    """What means something for drawn digits, for the terminal."""
    error = metrics["draws_nll_nats_standard_error"]
    lines = [
        f"{metrics['experiment']} (epoch {metrics['checkpoint_epoch']}): {metrics['num']} digits drawn "
        f"from a blank canvas, {metrics['asked']}, temperature {metrics['temperature']:g}, "
        f"seed {metrics['seed']}; "
        f"{metrics['seconds']:.1f} s on {metrics['device']}",
        f"the model's NLL of its own draws: {metrics['draws_nll_nats']:.2f}"
        + ("" if error is None else f" ± {error:.2f}")
        + " nats per digit"
        + (" (an estimate of its entropy)" if metrics["temperature"] == 1 else ""),
    ]
    if "judge" in metrics:
        binarization = metrics["trained_binarization"]
        tested = metrics["judge"]["test_accuracy"].get(binarization)
        lines.append(
            f"judge {metrics['judge']['sha256'][:12]}"
            + (f" (test accuracy {tested:.4f} on {binarization} digits)" if tested is not None else "")
            + " reads them as "
            + " ".join(f"{c}:{n}" for c, n in enumerate(metrics["judged_class_histogram"]))
            + f", mean confidence {metrics['mean_judge_confidence']:.3f}"
        )
    if "judged_as_requested" in metrics:
        by_class = metrics["judged_as_requested_by_class"]
        lines.append(
            f"judged as the class asked for: {metrics['judged_as_requested']:.3f}"
            + (
                " (" + " ".join(f"{c}:{v:.2f}" for c, v in by_class.items()) + ")"
                if len(by_class) > 1
                else ""
            )
        )
    lines.append(f"wrote {metrics['out']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    flags, typed = parse_command_flags(build_parser(), sample_options(), argv)
    options = SampleOptions(**flags)
    return run_cli(lambda: print(report(sample(options, typed))))


if __name__ == "__main__":
    sys.exit(main())
