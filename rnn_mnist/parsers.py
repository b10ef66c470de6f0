"""The scripts' parsers, built from the options declared on the config fields.

    parser = train_parser("Train a recurrent model on MNIST.")
    flags, typed = parse_train_flags(parser, ["--exp-name", "x", "--config", "fast"])
    options = parse_eval_options(evaluate_parser("..."), ["--exp-name", "x"])
    parser = command_parser("python -m rnn_mnist.nll", "...", options_of(NllOptions), NLL_GROUPS)

Both refuse, in one line, a value out of its range, an option typed twice with different values,
an option that its declared condition makes meaningless (``only=``), and the combinations listed in
rnn_mnist/config.py. A recipe (``--config NAME|PATH``, rnn_mnist/options.py) sets the defaults;
flags typed on the line win. What evaluate.py ignores on a --task classify experiment is known once
its checkpoint is: ``refuse_flags_the_experiment_ignores``.
"""

from __future__ import annotations

import argparse
from typing import Any

from rnn_mnist.cli import DefaultsHelpFormatter, ShortErrorParser, refuse_contradictions, typed_flags
from rnn_mnist.config import (
    EVAL_GROUPS,
    TRAIN_GROUPS,
    EvalOptions,
    eval_contradictions,
    eval_facts,
    eval_options,
    train_contradictions,
    train_facts,
    train_options,
)
from rnn_mnist.errors import RnnMnistError
from rnn_mnist.options import Option, add_options, read_recipe, recipe_path, refusals


def train_parser(description: str) -> argparse.ArgumentParser:
    """train.py's parser: every option of train_options(), grouped as TRAIN_GROUPS."""
    parser = ShortErrorParser(description=description, formatter_class=DefaultsHelpFormatter)
    add_options(parser, train_options(), TRAIN_GROUPS)
    return parser


def evaluate_parser(description: str) -> argparse.ArgumentParser:
    """evaluate.py's parser: every option of EvalOptions, grouped as EVAL_GROUPS."""
    parser = ShortErrorParser(description=description, formatter_class=DefaultsHelpFormatter)
    add_options(parser, eval_options(), EVAL_GROUPS)
    return parser


def command_parser(
    prog: str, description: str, options: list[Option], groups: dict[str, str | None]
) -> argparse.ArgumentParser:
    """The parser of a ``python -m rnn_mnist.<command>``: every one of ``options``, grouped as
    ``groups``, under the name it is run by (not the module's file name)."""
    parser = ShortErrorParser(prog=prog, description=description, formatter_class=DefaultsHelpFormatter)
    add_options(parser, options, groups)
    return parser


def parse_command_flags(
    parser: argparse.ArgumentParser, options: list[Option], argv: list[str] | None = None
) -> tuple[dict[str, Any], set[str]]:
    """A command's flags and the destinations typed, once no typed option is refused by its declared
    condition on the others (conditions on what the checkpoint says wait: ``refuse_ignored``)."""
    args = parser.parse_args(argv)
    flags, typed = vars(args), typed_flags(parser, argv)
    _refuse(parser, refusals(options, flags, typed))
    return flags, typed


def refuse_ignored(
    options: list[Option], flags: dict[str, Any], typed: set[str], facts: dict[str, Any]
) -> None:
    """Once ``facts`` are known (what the checkpoint says), refuse in one line a typed option they
    would make meaningless."""
    problems = refusals(options, {**flags, **facts}, typed)
    if problems:
        raise RnnMnistError(problems[0])


def parse_train_flags(
    parser: argparse.ArgumentParser, argv: list[str] | None = None
) -> tuple[dict[str, Any], set[str]]:
    """train.py's flags (the dict a checkpoint saves as "config") and the destinations typed.

    What was typed, whatever its value, is what --resume compares with the experiment; a recipe's
    values become the parser's defaults, so they count as not typed (as a default does).
    """
    options = train_options()
    args = parser.parse_args(argv)
    typed = typed_flags(parser, argv)
    if args.preset:
        parser.set_defaults(**_recipe(parser, args.preset, options))
        args = parser.parse_args(argv)
    flags = vars(args)
    _refuse(parser, train_contradictions(flags))
    if not args.resume:  # a resume runs on the experiment's saved flags; clashes are refused there
        _refuse(parser, refusals(options, {**flags, **train_facts(flags)}, typed))
    return flags, typed


def _recipe(parser: argparse.ArgumentParser, name: str, options: list[Option]) -> dict[str, Any]:
    """A recipe's values; a bad key or value, or keys the recipe's own values make meaningless,
    are one line naming the file."""
    try:
        values = read_recipe(name, options)
    except ValueError as exc:
        parser.error(str(exc))
    flags = {**{o.dest: o.default for o in options}, **values}
    problems = refusals(options, {**flags, **train_facts(flags)}, set(values)) + train_contradictions(flags)
    _refuse(parser, [f"{recipe_path(name)}: {problem}" for problem in problems])
    return values


def parse_eval_options(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> EvalOptions:
    """evaluate.py's options, once none of them contradicts another."""
    return parse_eval_flags(parser, argv)[0]


def parse_eval_flags(
    parser: argparse.ArgumentParser, argv: list[str] | None = None
) -> tuple[EvalOptions, set[str]]:
    """evaluate.py's options and the destinations typed (for refuse_flags_the_experiment_ignores)."""
    args = parser.parse_args(argv)
    flags, typed = vars(args), typed_flags(parser, argv)
    _refuse(parser, refusals(eval_options(), {**flags, **eval_facts(flags)}, typed))
    refuse_contradictions(parser, eval_contradictions(flags, typed))
    return EvalOptions(**flags), typed


def refuse_flags_the_experiment_ignores(options: EvalOptions, typed: set[str], classifier: bool) -> None:
    """Once the checkpoint tells whether the experiment is a classifier, refuse in one line the
    typed options its evaluation would ignore: completion flags on a --task classify experiment,
    --test-digits on a next-pixel one read without --classify. ``typed``: parse_eval_flags'."""
    flags = vars(options)
    problems = refusals(eval_options(), {**flags, **eval_facts(flags, classifier)}, typed)
    if problems:
        raise RnnMnistError(problems[0])


def _refuse(parser: argparse.ArgumentParser, messages: list[str]) -> None:
    if messages:
        parser.error(messages[0])
