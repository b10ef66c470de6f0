"""What train.py and evaluate.py share: flag types, one-line errors, and clean exits.

The ranges of numeric flags are argparse types built by ``bounded`` (``positive_int``,
``learning_rate``, ...), named by the options declared on the config fields (rnn_mnist/options.py):
a value outside its range (or NaN, inf, text) is a one-line ``error:`` before any work starts, on
the command line and in a recipe file alike.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable

from rnn_mnist.errors import RnnMnistError, describe_os_error

# numpy's legacy seeding takes 0..2**32-1; torch's generators take more, but values past 2**32
# would seed numpy and torch differently (or alias one another), so every seed stays in this range.
SEED_MAX = 2**32 - 1
# Adam's step is about lr per weight: past 1 the weights leave any useful range within a few
# batches, and past ~3e38 the update overflows fp32 inside the optimiser.
LR_MAX = 1.0


def bounded(
    kind: type,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> Callable[[str], int | float]:
    """An argparse type that reads an int or float and checks it lies in its range.

    ``low``/``high`` of None leave that side open; ``low_open``/``high_open`` exclude the bound.
    NaN and infinities are always refused.
    """
    if kind is int:
        what = (
            f"an integer in {low}..{high}"
            if low is not None and high is not None
            else f"an integer, at least {low}"
            if low is not None
            else "an integer"
        )
    else:
        left = "(" if low_open or low is None else "["
        right = ")" if high_open or high is None else "]"
        what = f"a number in {left}{'-inf' if low is None else f'{low:g}'}, "
        what += f"{'inf' if high is None else f'{high:g}'}{right}"

    def convert(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        inside = (
            math.isfinite(value)
            and (low is None or (value > low if low_open else value >= low))
            and (high is None or (value < high if high_open else value <= high))
        )
        if not inside:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value

    convert.__name__ = what  # what argparse names in its own messages
    return convert


positive_int = bounded(int, 1)
non_negative_int = bounded(int, 0)
positive_float = bounded(float, 0, low_open=True)
non_negative_float = bounded(float, 0)
fraction = bounded(float, 0, 1, high_open=True)
rng_seed = bounded(int, 0, SEED_MAX)
learning_rate = bounded(float, 0, LR_MAX, low_open=True)
decay_factor = bounded(float, 0, 1, low_open=True)  # a factor that may only lower the lr


def file_path(suffix: str) -> Callable[[str], str]:
    """The argparse type of a file flag whose name must end in ``suffix`` (``--out x.json``)."""

    def path(text: str) -> str:
        if not text.endswith(suffix):
            raise argparse.ArgumentTypeError(f"expected a {suffix} file, got {text!r}")
        return text

    path.__name__ = f"a {suffix} file"
    return path


def milestones(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated epochs, got {text!r}") from None
    if any(v < 1 for v in values) or list(values) != sorted(set(values)):
        raise argparse.ArgumentTypeError(f"epochs must be increasing and at least 1, got {text!r}")
    return values


def index_list(text: str) -> tuple[int, ...]:
    """Comma-separated test-set indices, each 0 or more and given once."""
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


def refuse_contradictions(parser: argparse.ArgumentParser, rules: list[tuple[bool, str]]) -> None:
    """Refuse the first rule that holds: a flag that the other flags would make meaningless is an
    error, never silently ignored."""
    for holds, message in rules:
        if holds:
            parser.error(message)


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, except for on/off switches, where "(default: True)" on a
    ``--no-x`` flag reads as the opposite of what it means."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.nargs == 0:
            return action.help
        return super()._get_help_string(action)


def _shown(value: object) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


class StoreOnce(argparse.Action):
    """argparse's "store", except that an option typed twice with different values is refused
    (``--mask center:14 --mask rows:5-9`` kept the last without a word). The same value typed
    again changes nothing and is accepted. Checked only under a ShortErrorParser, which keeps
    what each parse typed."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        typed = getattr(parser, "typed_values", None)
        if typed is not None:
            first = typed.setdefault(self.dest, (option_string, values))
            if first[1] != values:
                then = f"{option_string} {_shown(values)}"
                raise argparse.ArgumentError(
                    self, f"typed twice, {first[0]} {_shown(first[1])} then {then}: give it once"
                )
        setattr(namespace, self.dest, values)


class ShortErrorParser(argparse.ArgumentParser):
    """Reports a bad flag in one line rather than the whole usage block."""

    def parse_known_args(self, args=None, namespace=None):
        self.typed_values: dict[str, tuple[str, object]] = {}  # this parse's, for StoreOnce
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def run_cli(action: Callable[[], object]) -> int:
    """Run a script's work; an RnnMnistError, a failed file operation or Ctrl-C becomes one line on
    stderr and an exit code."""
    from rnn_mnist.steps import check_native_setting  # imported here: parsing alone needs no torch

    try:
        check_native_setting()
        action()
    except RnnMnistError as exc:
        if not exc.quiet:
            print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # a full disk, a read-only or missing folder, a name too long...
        print(f"error: {describe_os_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
