"""What train.py and evaluate.py share: flag types, one-line errors, and clean exits."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from rnn_mnist.errors import RnnMnistError


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or a positive number, got {text}")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def milestones(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated epochs, got {text!r}") from None
    if any(v < 1 for v in values) or list(values) != sorted(set(values)):
        raise argparse.ArgumentTypeError(f"epochs must be increasing and at least 1, got {text!r}")
    return values


_NOT_TYPED = object()


def typed_flags(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> set[str]:
    """The destinations of the flags typed on the command line, whatever their values.

    A flag typed with its default value (``--hidden 128``) is typed all the same, and a default
    changed by ``set_defaults`` (a preset) is not. argparse fills a destination from its default
    only when the namespace lacks it, so parsing into a namespace that already holds a marker for
    every destination leaves the marker exactly where nothing was typed.
    """
    every_dest = vars(parser.parse_args(argv))
    marked = argparse.Namespace(**dict.fromkeys(every_dest, _NOT_TYPED))
    parsed = vars(parser.parse_args(argv, namespace=marked))
    return {dest for dest, value in parsed.items() if value is not _NOT_TYPED}


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, except for on/off switches, where "(default: True)" on a
    ``--no-x`` flag reads as the opposite of what it means."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.nargs == 0:
            return action.help
        return super()._get_help_string(action)


class ShortErrorParser(argparse.ArgumentParser):
    """Reports a bad flag in one line rather than the whole usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def run_cli(action: Callable[[], object]) -> int:
    """Run a script's work; an RnnMnistError or Ctrl-C becomes one line on stderr and an exit code."""
    try:
        action()
    except RnnMnistError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
