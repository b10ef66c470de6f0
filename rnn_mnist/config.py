"""The options of train.py and evaluate.py that no model or data config holds, each declared once.

    TrainConfig(exp_name="gru-128").lr            # 0.003: the --lr default, from Python
    train_options()                               # every train.py option, in --help order

A field declared with ``option(...)`` (rnn_mnist/options.py) is a flag: its name, aliases, type and
range, default, help, group and where it applies live on the field and nowhere else. The model's
flags are on ModelConfig and ClassifierConfig (rnn_mnist/models.py), the data's on DataConfig
(rnn_mnist/data.py). rnn_mnist/parsers.py builds train.py's and evaluate.py's parsers from them.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, dataclass
from typing import Any

from rnn_mnist.checkpoint import CHECKPOINT_CHOICES
from rnn_mnist.cli import (
    bounded,
    decay_factor,
    fraction,
    index_list,
    learning_rate,
    milestones,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    rng_seed,
)
from rnn_mnist.data import NUM_PIXELS, DataConfig
from rnn_mnist.errors import RnnMnistError
from rnn_mnist.lr_schedule import LR_SCHEDULES, LrSchedule
from rnn_mnist.masks import MASK_KINDS, parse_mask
from rnn_mnist.mnist_files import DATA_ENV_VAR
from rnn_mnist.models import ClassifierConfig, ModelConfig
from rnn_mnist.options import Option, option, options_of, recipe_name, shipped_recipes, unless, when
from rnn_mnist.rollout import BEST_BY, INPAINTS, SAMPLINGS
from rnn_mnist.runtime import DEVICES, PRECISIONS
from rnn_mnist.scheduled_sampling import MODES, SCHEDULES, Schedule

TASKS = ("next-pixel", "classify")
LOSSES = ("bce", "mse")

# Where an option applies, when it depends on another option's value (see options.When).
SS_ON = unless("scheduled_sampling", "none")
LINEAR_ONLY = when(
    "scheduled_sampling", "linear", says="the {value} schedule would ignore {flags} (linear only)"
)
PARALLEL_ONLY = unless(
    "ss_mode",
    "sequential",
    says="--ss-mode sequential would ignore {flags} (the passes of --ss-mode parallel)",
)
STEP_ONLY = when("lr_schedule", "step")
# evaluate.py's conditions on the fact "reading" (eval_facts): None when it completes masked digits,
# else what makes it read whole digits as a classifier (--classify, or a --task classify experiment).
COMPLETING = when(  # everything but --test-digits, --batch-size and --device (rnn_mnist/reading.py)
    "reading",
    None,
    says="{flags} only change{s} completions, and {value} reads whole test digits: drop {them}",
)
READING = unless(
    "reading",
    None,
    says="{flags} counts the test digits a classifier reads (--classify, or a --task classify experiment); "
    "completions choose theirs with --num-digits, --indices or --per-class",
)
NOT_GREEDY = unless(
    "sampling",
    "greedy",
    says="{flags} does not change greedy completions (p > 0.5 whatever it is); "
    "use it with --sampling bernoulli or mean",
)
BEST_OF = unless("best_of", None, says="{flags} chooses among --best-of K samples; give --best-of too")
WITH_GIFS = when("gifs", says="--no-gifs writes no GIFs: drop {flags}, or --no-gifs")
# GIFs an evaluation writes unless --gifs says otherwise: enough to look at, seconds to write.
DEFAULT_GIFS = 16
CLASSIFYING = when("classify", says="{flags} adds a classifier's curve to --classify's: give --classify too")


def mask_spec(text: str) -> str:
    """The argparse type of --mask: a spec rnn_mnist/masks.py reads (an empty one is no mask, and
    was read as the default suffix:284), checked before any model is loaded."""
    try:
        parse_mask(text)
    except RnnMnistError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def exp_dir_option(group: str) -> Any:
    """--exp-dir, the same in both scripts."""
    return option(
        "experiments", "--exp-dir", help="where experiment folders live", group=group, on_resume="location"
    )


def device_option(group: str, only: tuple = ()) -> Any:
    """--device, the same in both scripts."""
    return option(
        "auto",
        "--device",
        choices=DEVICES,
        help="auto: cuda, then mps, then cpu",
        group=group,
        only=only,
        on_resume="may change",
    )


@dataclass
class TrainConfig:
    """The optimisation side of an experiment (model and data have their own configs)."""

    exp_name: str = option(
        MISSING, "--exp-name", help="experiment folder name under --exp-dir", group="experiment",
        recipe=False, on_resume="location",
    )  # fmt: skip
    exp_dir: str = exp_dir_option("experiment")
    tensorboard: bool = option(
        True, "--no-tensorboard", group="experiment", on_resume="may change",
        help="write no TensorBoard events (by default <exp-dir>/<exp-name>/tensorboard/ gets per-batch loss "
        "and lr, per-epoch metrics, the samples and the hyper-parameters: tensorboard --logdir <exp-dir>)",
    )  # fmt: skip
    epochs: int = option(
        10, "--epochs", kind=non_negative_int, help="total epochs (also when resuming)", group="training",
        on_resume="may change",
    )  # fmt: skip
    batch_size: int = option(
        128, "--batch-size", kind=positive_int, help="digits per batch", group="training"
    )
    lr: float = option(
        3e-3, "--lr", kind=learning_rate, group="training", on_resume="may change",
        help="Adam learning rate (the peak); with --resume, the schedule's new base from the next epoch on",
    )  # fmt: skip
    lr_schedule: str = option(
        "step", "--lr-schedule", choices=LR_SCHEDULES, group="training",
        help="step: times --lr-gamma after each --lr-milestones epoch; cosine: down to 1%% of --lr "
        "over --epochs (rnn_mnist/lr_schedule.py)",
    )  # fmt: skip
    lr_milestones: tuple[int, ...] = option(
        (), "--lr-milestones", kind=milestones, group="training", only=STEP_ONLY,
        help="step schedule: multiply the lr by --lr-gamma after each of these epochs, e.g. 5,8",
    )  # fmt: skip
    lr_gamma: float = option(
        0.1, "--lr-gamma", kind=decay_factor, group="training", only=STEP_ONLY,
        help="step schedule: lr factor at each milestone",
    )  # fmt: skip
    warmup_batches: int = option(
        0, "--warmup-batches", kind=non_negative_int, help="ramp the lr up linearly over these batches",
        group="training",
    )  # fmt: skip
    precision: str = option(
        "fp32", "--precision", choices=PRECISIONS, group="training",
        help="bf16: bf16 autocast of the forward pass (weights, state, loss and evaluation stay fp32; "
        "see rnn_mnist/runtime.py)",
    )  # fmt: skip
    clip: float | None = option(
        1.0, "--clip", kind=non_negative_float, help="gradient-norm clipping (0 disables it)",
        group="training",
    )  # fmt: skip
    loss: str = option(
        "bce", "--loss", choices=LOSSES, help="bce on logits, or mse on sigmoid (the original)",
        group="training", task="next-pixel",
    )  # fmt: skip
    seed: int = option(
        0, "--seed", kind=rng_seed, help="seeds initialisation, shuffling and dynamic binarisation",
        group="training",
    )  # fmt: skip
    device: str = device_option("training")
    scheduled_sampling: str = option(
        "none", "--scheduled-sampling", choices=SCHEDULES, group="ss", task="next-pixel",
        help="decay of eps_i, the probability of feeding the true pixel at batch i; none: teacher forcing",
    )  # fmt: skip
    ss_k: float | None = option(
        None, "--ss-k", kind=positive_float, group="ss", only=SS_ON,
        help="k of the schedule; unset: linear 1, exponential 0.9998, inverse-sigmoid 1000",
    )  # fmt: skip
    ss_c: float = option(
        1e-4, "--ss-c", kind=non_negative_float, group="ss", only=(SS_ON, LINEAR_ONLY),
        help="linear: eps_i = max(ss-min, k - c i)",
    )  # fmt: skip
    ss_min: float = option(
        0.5, "--ss-min", kind=fraction, help="linear: the floor of eps_i", group="ss",
        only=(SS_ON, LINEAR_ONLY),
    )  # fmt: skip
    ss_mode: str = option(
        "auto", "--ss-mode", choices=MODES, group="ss", only=SS_ON,
        help="parallel: extra teacher-forced passes (Duckworth et al. 2019); sequential: pixel by pixel "
        "(exact); auto: sequential on the CPU, where it measured faster, parallel elsewhere",
    )  # fmt: skip
    ss_passes: int = option(
        1, "--ss-passes", kind=positive_int, help="parallel: prediction passes per batch", group="ss",
        only=(SS_ON, PARALLEL_ONLY),
    )  # fmt: skip

    def schedule(self) -> Schedule:
        return Schedule(self.scheduled_sampling, self.ss_k, self.ss_c, self.ss_min)

    def lr_at(self, batches_per_epoch: int) -> LrSchedule:
        return LrSchedule(
            self.lr_schedule,
            self.lr,
            self.epochs,
            batches_per_epoch,
            self.lr_milestones,
            self.lr_gamma,
            self.warmup_batches,
        )

    def warmup_note(self, batches_per_epoch: int) -> str | None:
        """One line when the warm-up takes half the run or more (a shortened pilot of a recipe),
        so that a run that never left its warm-up is not mistaken for the recipe's."""
        total = self.epochs * batches_per_epoch
        if self.warmup_batches == 0 or 2 * self.warmup_batches < total:
            return None
        return (
            f"note: --warmup-batches {self.warmup_batches} is at least half of this run's {total} batches: "
            "the lr spends the run warming up (lower --warmup-batches for a shortened run)"
        )


@dataclass
class RunOptions:
    """The train.py options no config holds: the run's mode, its task, a recipe, and the flags that
    choose other configs' values (--condition sets ModelConfig.num_classes, --permute
    ClassifierConfig.permutation_seed)."""

    resume: bool = option(
        False, "--resume", help="continue the experiment to --epochs", group="experiment", recipe=False,
        on_resume="mode",
    )  # fmt: skip
    overwrite: bool = option(
        False, "--overwrite", help="replace an existing experiment", group="experiment", recipe=False,
        on_resume="mode",
    )  # fmt: skip
    task: str = option(
        "next-pixel", "--task", choices=TASKS, group="experiment",
        help="next-pixel: the generative model of binarised pixels; classify: sequential MNIST, read the "
        "784 pixels and name the digit (cross-entropy, accuracy)",
    )  # fmt: skip
    # The destination keeps its first name, "preset": checkpoints save the flags under it.
    preset: str | None = option(
        None, "--config", "--preset", kind=recipe_name, metavar="RECIPE", group="experiment", recipe=False,
        help=f"start from a recipe: a .toml file, or the name of one in configs/ ({shipped_recipes()}); "
        "flags typed too override it",
    )  # fmt: skip
    condition: str = option(
        "none", "--condition", choices=("none", "label"), help="label: tell the model the digit's class",
        group="model", task="next-pixel",
    )  # fmt: skip
    permute: bool = option(
        False, "--permute", group="classify", task="classify",
        help="permuted sequential MNIST: read the pixels in one fixed order drawn from --data-seed, saved "
        "in the checkpoint",
    )  # fmt: skip
    binarized_input: bool = option(
        False, "--binarized-input", group="classify", task="classify",
        help="read the pixels binarised by --binarize, as the next-pixel task does (default: grey levels "
        "scaled to [0, 1])",
    )  # fmt: skip


# train.py's option groups, in --help order (and the order of the flags dict a checkpoint saves).
TRAIN_GROUPS: dict[str, str | None] = {
    "experiment": "experiment",
    "data": "data",
    "model": "model",
    "classify": "--task classify (rnn_mnist/tasks.py)",
    "training": "training",
    "ss": "scheduled sampling (see rnn_mnist/scheduled_sampling.py)",
}


def train_options() -> list[Option]:
    """Every train.py option (RunOptions last: within each group its options follow the configs')."""
    return options_of(TrainConfig, DataConfig, ModelConfig, ClassifierConfig, RunOptions)


def train_facts(flags: dict[str, Any]) -> dict[str, Any]:
    """What a train.py run reads, for the conditions on facts: "pixels" is "binarised", or "grey
    levels" for --task classify without --binarized-input (rnn_mnist/tasks.py, ClassifyTask)."""
    binarised = flags["task"] != "classify" or flags["binarized_input"]
    return {"pixels": "binarised" if binarised else "grey levels"}


def train_contradictions(flags: dict[str, Any]) -> list[str]:
    """train.py's rules that are not one option's "applies only when": values that do not combine."""
    try:
        Schedule(flags["scheduled_sampling"], flags["ss_k"], flags["ss_c"], flags["ss_min"])
    except ValueError as exc:
        return [str(exc)]
    return []


@dataclass
class EvalOptions:
    """evaluate.py's options; reading.py reads --classify's, evaluation.py the others."""

    exp_name: str = option(
        MISSING, "--exp-name", help="experiment to evaluate (its checkpoint.ckpt, or --checkpoint best)",
        group="main",
    )  # fmt: skip
    exp_dir: str = exp_dir_option("main")
    checkpoint: str = option(
        "last", "--checkpoint", choices=CHECKPOINT_CHOICES, group="main",
        help="last: checkpoint.ckpt, the last epoch's; best: best.ckpt, the epoch with the best validation "
        "NLL (accuracy for a classifier)",
    )  # fmt: skip
    out_dir: str | None = option(
        None, "--out-dir", group="main",
        help="output folder, replaced whole; unset: plots/<exp-name> (--classify: plots/<exp-name>-classify)",
    )  # fmt: skip
    data_dir: str | None = option(
        None, "--data-dir", help=f"folder holding MNIST/raw; unset: ${DATA_ENV_VAR}, else the training one",
        group="main",
    )  # fmt: skip
    mask_pixels: int = option(
        284, "--mask-pixels", kind=bounded(int, 1, NUM_PIXELS), group="main", only=COMPLETING,
        help=f"hide the last N pixels (1..{NUM_PIXELS}; {NUM_PIXELS}: blank); shorthand for --mask suffix:N",
    )  # fmt: skip
    mask: str | None = option(  # a mask spec (rnn_mnist/masks.py); None: the last mask_pixels pixels
        None, "--mask", kind=mask_spec, metavar="SPEC", group="main", only=COMPLETING,
        help=f"hide any region: KIND:ARGS with KIND one of {', '.join(MASK_KINDS)}, e.g. center:14, "
        "rows:10-17, cols:3-5, box:R0,C0,R1,C1 (inclusive), left:N, right:N, random:0.5 (drawn with --seed)",
    )  # fmt: skip
    inpaint: str = option(
        "blind", "--inpaint", choices=INPAINTS, group="main", only=COMPLETING,
        help="blind: draw the hole from the pixels before it; sample / best: sequential Monte Carlo with "
        "--particles, weighing each fill by the visible pixels after it, then keep one particle per digit "
        "drawn by weight / the most likely one",
    )  # fmt: skip
    particles: int = option(
        1, "--particles", kind=positive_int, help="particles per digit for --inpaint sample / best",
        group="main", only=COMPLETING,
    )  # fmt: skip
    sampling: str = option(
        "greedy", "--sampling", choices=SAMPLINGS, group="main", only=COMPLETING,
        help="feedback: greedy (p > 0.5), bernoulli (draw from p), mean (feed p itself)",
    )  # fmt: skip
    temperature: float = option(
        1.0, "--temperature", kind=positive_float, help="divides the logits", group="main",
        only=(COMPLETING, NOT_GREEDY),
    )  # fmt: skip
    samples: int = option(
        1, "--samples", kind=positive_int, help="completions per digit", group="main", only=COMPLETING
    )
    best_of: int | None = option(
        None, "--best-of", kind=positive_int, group="main", only=COMPLETING,
        help="draw K completions per digit and keep one, chosen by --best-by (use with bernoulli)",
    )  # fmt: skip
    best_by: str = option(
        "likelihood", "--best-by", choices=BEST_BY, group="main", only=(COMPLETING, BEST_OF),
        help="likelihood: the completion the model finds most likely; label-posterior (label-conditioned "
        "models): the one from which the model itself most surely infers the requested class, p(label | "
        "image) by Bayes' rule over its 10 class likelihoods (the judge is never consulted)",
    )  # fmt: skip
    seed: int = option(
        0, "--seed", kind=rng_seed, help="seeds the choice of digits and Bernoulli draws", group="main",
        only=COMPLETING,
    )  # fmt: skip
    indices: tuple[int, ...] | None = option(
        None, "--indices", kind=index_list, help="test-set indices, e.g. 3705,3217", group="digits",
        only=COMPLETING,
    )  # fmt: skip
    num_digits: int = option(
        16, "--num-digits", kind=positive_int, help="how many, chosen at random", group="digits",
        only=COMPLETING,
    )  # fmt: skip
    per_class: int | None = option(  # N digits of every class, one grid row per class
        None, "--per-class", kind=positive_int, help="N digits of every class, a grid row per class",
        group="digits", only=COMPLETING,
    )  # fmt: skip
    digit: int | None = option(
        None, "--digit", kind=bounded(int, 0, 9), help="only digits of this class (0..9)", group="digits",
        only=COMPLETING,
    )  # fmt: skip
    device: str = device_option("main")
    batch_size: int = option(  # digits per rollout batch (times --samples)
        1000, "--batch-size", kind=positive_int, group="main",
        help="digits completed together (with --particles K: batch-size / K digits, K particles each)",
    )  # fmt: skip
    precision: str = option(
        "fp32", "--precision", choices=PRECISIONS, group="main", only=COMPLETING,
        help="bf16: the rollout's GEMMs in bf16 (state and probabilities fp32); NLLs are always fp32",
    )  # fmt: skip
    gifs: bool = option(True, "--no-gifs", help="skip the GIFs (--gifs 0)", group="main", only=COMPLETING)
    max_gifs: int = option(  # a GIF takes about 0.5 s to write, a digit's rollout well under 1 ms
        DEFAULT_GIFS, "--gifs", kind=bounded(int, 0), metavar="N", group="main",
        only=(COMPLETING, WITH_GIFS),
        help="GIFs of at most N digits, spread over the chosen ones (0: none); metrics are of every digit",
    )  # fmt: skip
    judge_path: str | None = option(  # None: the shipped judge (rnn_mnist/weights/judge.pt)
        None, "--judge", metavar="PATH", group="judge", only=COMPLETING,
        help="a judge made by `python -m rnn_mnist.judge --out PATH`; unset: the shipped one "
        "(rnn_mnist/weights/judge.pt)",
    )  # fmt: skip
    judge: bool = option(True, "--no-judge", help="skip class agreement", group="judge", only=COMPLETING)
    classify: bool = option(
        False, "--classify", group="reading",
        help="read a label-conditioned model as a classifier: p(class | image) by Bayes' rule from ten "
        "teacher-forced passes, test accuracy, and accuracy by pixels read",
    )  # fmt: skip
    against: str | None = option(
        None, "--against", metavar="EXP", group="reading", only=CLASSIFYING,
        help="with --classify: draw this classify experiment's accuracy by pixels read on the same axes; "
        "its name in --exp-dir, or its folder (experiments/smnist)",
    )  # fmt: skip
    test_digits: int | None = option(
        None, "--test-digits", kind=positive_int, help="read only the first N test digits (unset: all)",
        group="reading", only=READING,
    )  # fmt: skip


EVAL_GROUPS: dict[str, str | None] = {
    "main": None,
    "digits": "which test digits",
    "judge": "the digit judge (class agreement)",
    "reading": "reading digits (a --task classify experiment, or --classify)",
}


def eval_options() -> list[Option]:
    """Every evaluate.py option."""
    return options_of(EvalOptions)


def eval_facts(flags: dict[str, Any], classifier: bool | None = None) -> dict[str, Any]:
    """What an evaluate.py run does, for the conditions on facts: "reading" is None when it completes
    digits, else "--classify" or the --task classify experiment it reads. ``classifier``: whether the
    experiment is one, None before its checkpoint tells (then "reading" is known only with --classify,
    and the conditions on it wait: rnn_mnist/parsers.py, refuse_flags_the_experiment_ignores)."""
    if flags["classify"]:
        return {"reading": "--classify"}
    if classifier is None:
        return {}
    return {"reading": f"{flags['exp_name']} (--task classify)" if classifier else None}


def eval_contradictions(flags: dict[str, Any], typed: set[str]) -> list[tuple[bool, str]]:
    """evaluate.py's rules between options (beyond one option's "applies only when"): (it is so,
    why) for each."""
    sampling, samples, best_of = flags["sampling"], flags["samples"], flags["best_of"]
    deterministic = sampling != "bernoulli"  # greedy and mean draw the same completion every time
    return [
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
            best_of is not None and deterministic,
            f"--best-of K chooses among K draws, but --sampling {sampling} draws the same "
            "completion K times: use --sampling bernoulli",
        ),
        (
            samples > 1 and deterministic,
            f"--samples {samples} with --sampling {sampling} gives {samples} identical "
            "completions: use --sampling bernoulli",
        ),
        (
            best_of is not None and samples > 1,
            "--best-of keeps one completion per digit; it does not combine with --samples",
        ),
        (
            flags["judge_path"] is not None and not flags["judge"],
            "--judge names the judge to use and --no-judge skips it: give one of them",
        ),
        (
            flags["mask"] is not None and "mask_pixels" in typed,
            "--mask-pixels N is --mask suffix:N: give one of them",
        ),
        (
            flags["inpaint"] != "blind" and flags["particles"] == 1,
            f"--inpaint {flags['inpaint']} with one particle is blind filling: give --particles K > 1",
        ),
    ]
