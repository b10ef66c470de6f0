"""Train a recurrent model on MNIST: a next-pixel model (teacher forcing), or a sequential-MNIST classifier.

Usage:
    python train.py --exp-name gru-128 --hidden 128
    python train.py --exp-name smnist --task classify --lr 2e-3 --lr-schedule cosine   # name the digit
    python train.py --exp-name psmnist --task classify --permute                        # permuted pixels
    python train.py --exp-name gru-128 --hidden 128 --data-dir ../shared/mnist   # offline
    python train.py --exp-name gru-128 --epochs 20 --resume                      # continue

Writes experiments/<exp-name>/checkpoint.ckpt and metrics.pkl (plus metrics.json and train.log)
after every epoch, atomically. Ctrl-C keeps the last complete epoch; --resume picks it up.
"""

from __future__ import annotations

import argparse
import sys

from rnn_mnist.cli import (
    DefaultsHelpFormatter,
    ShortErrorParser,
    decay_factor,
    fraction,
    learning_rate,
    milestones,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    refuse_contradictions,
    rng_seed,
    run_cli,
    typed_flags,
)
from rnn_mnist.data import BINARIZATIONS, DATA_ENV_VAR
from rnn_mnist.lr_schedule import LR_SCHEDULES
from rnn_mnist.models import CELLS, READOUTS
from rnn_mnist.runtime import DEVICES, PRECISIONS
from rnn_mnist.scheduled_sampling import MODES, SCHEDULES, Schedule
from rnn_mnist.tasks import TASKS
from rnn_mnist.training import LOSSES, train_experiment

# Recipes one flag away. The defaults stay the plain GRU of the original project, so that earlier
# experiments and checkpoints keep their meaning. "fast": under 58 nats test NLL with class
# agreement above 0.93 in about 13 minutes of training on 2 CPU cores, where the step-schedule
# recipe before it needed about 51 minutes for 58.0 (README, Results).
PRESETS: dict[str, dict[str, object]] = {
    "fast": {
        "context": True,
        "context_rows": 3,
        "context_width": 7,
        "position": True,
        "precision": "fp32",
        "lr_schedule": "cosine",
        "lr": 8e-3,
        "warmup_batches": 200,
        "epochs": 6,
    },
}


def describe_preset(name: str) -> str:
    return " ".join(
        f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in PRESETS[name].items()
    )


def build_parser() -> argparse.ArgumentParser:
    parser = ShortErrorParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=DefaultsHelpFormatter,
    )
    exp = parser.add_argument_group("experiment")
    exp.add_argument("--exp-name", required=True, help="experiment folder name under --exp-dir")
    exp.add_argument("--exp-dir", default="experiments", help="where experiment folders live")
    exp.add_argument("--resume", action="store_true", help="continue the experiment to --epochs")
    exp.add_argument("--overwrite", action="store_true", help="replace an existing experiment")
    exp.add_argument(
        "--task",
        choices=TASKS,
        default="next-pixel",
        help="next-pixel: the generative model of binarised pixels; classify: sequential MNIST, read the "
        "784 pixels and name the digit (cross-entropy, accuracy)",
    )
    exp.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="start from a tested recipe; flags given too override it. "
        + "; ".join(f"{name}: {describe_preset(name)}" for name in sorted(PRESETS)),
    )

    data = parser.add_argument_group("data")
    data.add_argument(
        "--data-dir",
        default=None,
        help=f"folder holding MNIST/raw; unset: ${DATA_ENV_VAR}, else ./data (downloaded if missing)",
    )
    data.add_argument(
        "--binarize",
        choices=BINARIZATIONS,
        default="threshold",
        help="threshold: grey > --threshold; dynamic: Bernoulli(grey) redrawn every epoch; "
        "static: one Bernoulli draw per digit fixed by --data-seed",
    )
    data.add_argument("--threshold", type=fraction, default=0.1, help="grey level for --binarize threshold")
    data.add_argument(
        "--val-size", type=non_negative_int, default=5000, help="validation digits held out of the 60k"
    )
    data.add_argument(
        "--train-subset", type=positive_int, default=None, help="train on the first N digits only"
    )
    data.add_argument(
        "--test-subset", type=positive_int, default=None, help="test on the first N test digits only"
    )
    data.add_argument(
        "--data-seed", type=rng_seed, default=0, help="fixes the validation split and Bernoulli binarisations"
    )

    model = parser.add_argument_group("model")
    model.add_argument("--cell", choices=sorted(CELLS), default="gru", help="recurrent cell")
    model.add_argument(
        "--hidden",
        "--hidden-size",
        dest="hidden_size",
        type=positive_int,
        default=128,
        help="hidden units per layer",
    )
    model.add_argument(
        "--layers", dest="num_layers", type=positive_int, default=1, help="stacked recurrent layers"
    )
    model.add_argument(
        "--dropout", type=fraction, default=0.0, help="dropout between layers and before the output"
    )
    model.add_argument(
        "--context",
        action="store_true",
        help="also feed pixels of the rows above the next one (causal 2-D context)",
    )
    model.add_argument(
        "--context-rows", type=positive_int, default=1, help="with --context: how many rows above"
    )
    model.add_argument(
        "--context-width",
        type=positive_int,
        default=3,
        help="with --context: how many pixels of each row, centred on the next pixel's column (odd)",
    )
    model.add_argument("--position", action="store_true", help="also feed the next pixel's row and column")
    model.add_argument(
        "--head-hidden",
        type=non_negative_int,
        default=0,
        help="width of a hidden ReLU layer between the recurrent state and the logit (0: linear)",
    )
    model.add_argument(
        "--condition",
        choices=("none", "label"),
        default="none",
        help="label: tell the model the digit's class",
    )

    classify = parser.add_argument_group("--task classify (rnn_mnist/tasks.py)")
    classify.add_argument(
        "--readout",
        choices=READOUTS,
        default="last",
        help="the linear head reads the final state (last) or the mean of the 784 states (mean)",
    )
    classify.add_argument(
        "--permute",
        action="store_true",
        help="permuted sequential MNIST: read the pixels in one fixed order drawn from --data-seed, saved "
        "in the checkpoint",
    )
    classify.add_argument(
        "--binarized-input",
        action="store_true",
        help="read the pixels binarised by --binarize, as the next-pixel task does (default: grey levels "
        "scaled to [0, 1])",
    )

    train = parser.add_argument_group("training")
    train.add_argument(
        "--epochs", type=non_negative_int, default=10, help="total epochs (also when resuming)"
    )
    train.add_argument("--batch-size", type=positive_int, default=128, help="digits per batch")
    train.add_argument("--lr", type=learning_rate, default=3e-3, help="Adam learning rate (the peak)")
    train.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        default="step",
        help="step: times --lr-gamma after each --lr-milestones epoch; cosine: down to 1%% of --lr "
        "over --epochs (rnn_mnist/lr_schedule.py)",
    )
    train.add_argument(
        "--lr-milestones",
        type=milestones,
        default=(),
        help="step schedule: multiply the lr by --lr-gamma after each of these epochs, e.g. 5,8",
    )
    train.add_argument(
        "--lr-gamma", type=decay_factor, default=0.1, help="step schedule: lr factor at each milestone"
    )
    train.add_argument(
        "--warmup-batches",
        type=non_negative_int,
        default=0,
        help="ramp the lr up linearly over these batches",
    )
    train.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="bf16: bf16 autocast of the forward pass (weights, state, loss and evaluation stay fp32; "
        "see rnn_mnist/compute.py)",
    )
    train.add_argument(
        "--clip", type=non_negative_float, default=1.0, help="gradient-norm clipping (0 disables it)"
    )
    train.add_argument(
        "--loss", choices=LOSSES, default="bce", help="bce on logits, or mse on sigmoid (the original)"
    )
    train.add_argument(
        "--seed", type=rng_seed, default=0, help="seeds initialisation, shuffling and dynamic binarisation"
    )
    train.add_argument("--device", choices=DEVICES, default="auto", help="auto: cuda, then mps, then cpu")

    ss = parser.add_argument_group("scheduled sampling (see rnn_mnist/scheduled_sampling.py)")
    ss.add_argument(
        "--scheduled-sampling",
        choices=SCHEDULES,
        default="none",
        help="decay of eps_i, the probability of feeding the true pixel at batch i; none: teacher forcing",
    )
    ss.add_argument(
        "--ss-k",
        type=positive_float,
        default=None,
        help="k of the schedule; unset: linear 1, exponential 0.9998, inverse-sigmoid 1000",
    )
    ss.add_argument(
        "--ss-c", type=non_negative_float, default=1e-4, help="linear: eps_i = max(ss-min, k - c i)"
    )
    ss.add_argument("--ss-min", type=fraction, default=0.5, help="linear: the floor of eps_i")
    ss.add_argument(
        "--ss-mode",
        choices=MODES,
        default="auto",
        help="parallel: extra teacher-forced passes (Duckworth et al. 2019); sequential: pixel by pixel "
        "(exact); auto: sequential on the CPU, where it measured faster, parallel elsewhere",
    )
    ss.add_argument("--ss-passes", type=positive_int, default=1, help="parallel: prediction passes per batch")
    return parser


def ignored_flags(args: argparse.Namespace, typed: set[str]) -> list[tuple[bool, str]]:
    """Flags typed where the other flags make them do nothing: (it is so, why) for each case."""

    def named(*dests: str) -> str:
        return " and ".join(f"--{d.replace('_', '-')}" for d in dests if d in typed)

    schedule = args.scheduled_sampling
    return [
        (
            schedule == "none" and bool(named("ss_k", "ss_c", "ss_min", "ss_mode", "ss_passes")),
            f"without --scheduled-sampling, {named('ss_k', 'ss_c', 'ss_min', 'ss_mode', 'ss_passes')} "
            "would be ignored",
        ),
        (
            schedule not in ("none", "linear") and bool(named("ss_c", "ss_min")),
            f"the {schedule} schedule would ignore {named('ss_c', 'ss_min')} (linear only)",
        ),
        (
            args.ss_mode == "sequential" and "ss_passes" in typed,
            "--ss-mode sequential would ignore --ss-passes (the passes of --ss-mode parallel)",
        ),
        (
            args.lr_schedule == "cosine" and bool(named("lr_milestones", "lr_gamma")),
            f"--lr-schedule cosine would ignore {named('lr_milestones', 'lr_gamma')} (step only)",
        ),
        (
            not args.context and bool(named("context_rows", "context_width")),
            f"without --context, {named('context_rows', 'context_width')} would be ignored",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # What was typed, whatever its value: --resume refuses typed flags that clash with the
    # experiment, and keeps the experiment's own value of every flag not typed.
    typed = typed_flags(parser, argv)
    if args.preset:  # the preset's values become the defaults; flags typed on the line still win
        parser.set_defaults(**PRESETS[args.preset])
        args = parser.parse_args(argv)
    try:
        Schedule(args.scheduled_sampling, args.ss_k, args.ss_c, args.ss_min)
    except ValueError as exc:
        parser.error(str(exc))
    if not args.resume:  # a resume runs on the experiment's saved flags; clashes are refused there
        refuse_contradictions(parser, ignored_flags(args, typed))
    return run_cli(lambda: train_experiment(vars(args), typed=typed))


if __name__ == "__main__":
    sys.exit(main())
