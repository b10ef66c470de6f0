"""What ``--resume`` continues with, what it may change, and the command that resumes a run.

    typed = typed_flags(parser, argv)                   # rnn_mnist.cli: what the user typed
    checkpoint = load_training_checkpoint(paths.checkpoint)
    flags = resumed_flags(checkpoint["config"], flags, typed)
    resumes = resume_record(checkpoint, flags)          # every resume, with what it changed
    print(resume_command(exp_dir, exp_name))

An experiment is its saved settings. Where its folder lives is not one of them: a moved, copied or
renamed folder, or the same one spelled another way, resumes. Only typed flags count: one that
clashes with the experiment is refused even when it equals the parser's default, and one not typed
never replaces the saved value (so a resume trains to the experiment's own ``--epochs`` and reads
its own ``--data-dir``). What a resume may change (``--epochs``, ``--lr``, ``--device``,
``--data-dir``) and did change is recorded: the checkpoint and metrics keep a list of resumes.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from rnn_mnist.checkpoint import load_checkpoint
from rnn_mnist.config import train_options
from rnn_mnist.errors import RnnMnistError
from rnn_mnist.options import on_resume, recipe_path

# What --resume does with each flag is declared on the flag (on_resume=, rnn_mnist/config.py):
# where the experiment's folder is now is taken from the command, never compared with the saved one;
# how far to train, where to run and where the data is may change when typed; --resume and
# --overwrite are the run's mode. Every other flag keeps the experiment's saved value.
LOCATION_FLAGS = on_resume(train_options(), "location")
RESUMABLE_CHANGES = on_resume(train_options(), "may change")
RUN_MODE_FLAGS = on_resume(train_options(), "mode")
# What a train.py checkpoint holds beyond what every rnn-mnist checkpoint holds.
TRAINING_KEYS = ("config", "data_config", "history", "rng_state")


def check_run_mode(flags: dict[str, Any]) -> None:
    """``--resume`` and ``--overwrite`` ask for opposite things: refuse the pair."""
    if flags.get("resume") and flags.get("overwrite"):
        raise RnnMnistError(
            "--resume continues the experiment and --overwrite starts it again: pass one of them"
        )


def load_training_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint train.py can continue from (not, say, a digit judge's)."""
    checkpoint = load_checkpoint(path)
    if "shipped" in checkpoint:  # rnn_mnist/pretrained.py: weights without optimizer or RNG state
        raise RnnMnistError(
            f"cannot resume from {path}: it is a shipped model (weights only, no optimizer state); "
            "train your own with the command in COMMAND beside it"
        )
    missing = [key for key in TRAINING_KEYS if key not in checkpoint]
    if missing:
        kind = checkpoint["model_config"].get("kind")
        raise RnnMnistError(
            f"cannot resume from {path}: it is not a train.py checkpoint (it has no {', '.join(missing)}"
            + (f"; it holds a {kind}" if isinstance(kind, str) else "")
            + ")"
        )
    return checkpoint


def resumed_flags(saved: dict[str, Any], given: dict[str, Any], typed: set[str]) -> dict[str, Any]:
    """The saved experiment's flags, with its current location and the typed changes it allows.

    ``typed`` names the flags the user typed; typing another one with a value other than the
    experiment's is refused rather than silently ignored.
    """
    clashes = [
        f"--{key.replace('_', '-')} {given[key]} (the experiment has {saved.get(key)})"
        for key in sorted(typed - RESUMABLE_CHANGES - LOCATION_FLAGS - RUN_MODE_FLAGS)
        if key in given and not _same_value(key, given[key], saved.get(key))
    ]
    if clashes:
        raise RnnMnistError(
            "--resume continues with the experiment's saved settings; drop "
            + ", ".join(clashes)
            + " or start a new experiment"
        )
    now = {key: given[key] for key in LOCATION_FLAGS | RUN_MODE_FLAGS if key in given}
    changes = {key: given[key] for key in typed & RESUMABLE_CHANGES if key in given}
    return {**saved, **now, **changes}


def resume_record(checkpoint: dict[str, Any], flags: dict[str, Any]) -> list[dict[str, Any]]:
    """The experiment's resumes so far (``resumes``, saved in its checkpoint), then this one: the epoch
    it continues after and what it changes, ``{"lr": {"from": 0.003, "to": 0.001}}``."""
    saved = checkpoint["config"]
    changed = {
        key: {"from": saved.get(key), "to": flags[key]}
        for key in sorted(RESUMABLE_CHANGES)
        if key in flags and flags[key] != saved.get(key)
    }
    earlier = checkpoint.get("resumes", [])
    return [
        *(earlier if isinstance(earlier, list) else []),
        {"after_epoch": checkpoint["epoch"], "changed": changed},
    ]


def describe_changes(changed: dict[str, dict[str, Any]]) -> str:
    """``--lr 0.001 (was 0.003), --epochs 4 (was 2)``: a resume's changes, for the log."""
    return ", ".join(
        f"--{key.replace('_', '-')} {change['to']} (was {change['from']})" for key, change in changed.items()
    )


def _same_value(key: str, given: Any, saved: Any) -> bool:
    """Whether a typed value is the experiment's own; a recipe is the same whichever way its file
    is named (``fast``, ``configs/fast.toml``, an absolute path)."""
    if key == "preset" and isinstance(given, str) and isinstance(saved, str):
        return recipe_path(given).resolve() == recipe_path(saved).resolve()
    return given == saved


def resume_command(exp_dir: str, exp_name: str, launcher: list[str] | None = None) -> str:
    """The command that continues an experiment as it was set up, to paste into a shell;
    ``launcher``: how train.py was started (``distributed.launch_prefix``: python or torchrun)."""
    words = [*(launcher or ["python"]), "train.py", "--exp-dir", str(exp_dir), "--exp-name", exp_name]
    return shlex.join([*words, "--resume"])
