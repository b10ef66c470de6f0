"""Every command-line option is declared once, on the field of the config dataclass it sets.

    hidden_size: int = option(128, "--hidden", "--hidden-size", kind=positive_int, group="model",
                              help="hidden units per layer")

The field's default is the flag's default; its name is the flag's destination (the key of the
flags dict a checkpoint saves). The declaration also says where the option applies (``only=``: a
condition on another option; ``task=``: one training task), whether a recipe file may set it, and
what ``--resume`` does with it. From these declarations this module builds the argparse parsers
(``add_options``), the refusals of options that would be ignored (``refusals``), the flags that
belong to one task (``task_only``) and the recipes read from TOML files (``read_recipe``).
"""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from rnn_mnist.cli import StoreOnce

# The recipes shipped with the project: `--config fast` reads configs/fast.toml, from any folder.
CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"
# What --resume does with an option (rnn_mnist/resume.py): keep the saved value and refuse a typed
# one that differs (saved), accept a typed change (may change), or take it from the command
# (location: where the experiment is now; mode: --resume and --overwrite themselves).
ON_RESUME = ("saved", "may change", "location", "mode")
# Values of another option that mean "off": `unless(x, "none")` reads as "without --x".
_OFF = ((None,), ("none",), (False,))


@dataclass(frozen=True)
class When:
    """An option applies only when option ``dest`` holds one of ``values`` (with ``negate``: none
    of them). ``dest`` may also name a fact that no option holds (what the run reads: see
    config.py), known to the caller of ``refusals`` or not yet. ``says`` words the refusal, with
    ``{flags}`` (the options it would ignore), ``{value}`` (``dest``'s value), and ``{s}``,
    ``{them}`` ("s", "it" for one option; "", "them" for several); unset, it is worded from the
    condition itself."""

    dest: str
    values: tuple[Any, ...]
    negate: bool = False
    says: str = ""

    def holds(self, flags: dict[str, Any]) -> bool:
        return (flags[self.dest] in self.values) != self.negate

    def refusal(self, ignored: list[str], flags: dict[str, Any], name: str) -> str:
        """The one-line refusal of the ``ignored`` option names; ``name`` is ``dest``'s flag."""
        value, listed = flags[self.dest], join_names(ignored)
        if self.says:
            one = len(ignored) == 1
            return self.says.format(
                flags=listed, value=value, s="s" if one else "", them="it" if one else "them"
            )
        if (self.values == (True,) and not self.negate) or (self.negate and self.values in _OFF):
            return f"without {name}, {listed} would be ignored"
        only = f" ({' or '.join(map(str, self.values))} only)" if not self.negate else ""
        return f"{name} {value} would ignore {listed}{only}"


def when(dest: str, *values: Any, says: str = "") -> When:
    """Applies only when option ``dest`` is one of ``values`` (none given: when it is on)."""
    return When(dest, values or (True,), says=says)


def unless(dest: str, *values: Any, says: str = "") -> When:
    """Applies only when option ``dest`` is none of ``values``."""
    return When(dest, values, negate=True, says=says)


@dataclass(frozen=True)
class Option:
    """One command-line option, as its dataclass field declares it (see ``option``)."""

    dest: str
    flags: tuple[str, ...]
    default: Any
    help: str
    group: str
    kind: Callable[[str], Any] | None = None
    choices: tuple[Any, ...] | None = None
    metavar: str | None = None
    only: tuple[When, ...] = ()
    task: str | None = None
    recipe: bool = True
    on_resume: str = "saved"

    @property
    def name(self) -> str:
        """The option's flag in messages (``--hidden``, ``--no-gifs``)."""
        return self.flags[0]

    @property
    def switch(self) -> bool:
        """An on/off flag: ``--context`` turns a False default on, ``--no-gifs`` a True one off."""
        return isinstance(self.default, bool)

    def add_to(self, target: argparse._ActionsContainer) -> None:
        """Add this option to a parser or an argument group."""
        if self.switch:
            action = "store_false" if self.default else "store_true"
            target.add_argument(*self.flags, dest=self.dest, action=action, help=self.help)
            return
        kwargs: dict[str, Any] = {"type": self.kind, "choices": self.choices, "metavar": self.metavar}
        kwargs["action"] = StoreOnce  # a second value of the option is refused, not kept silently
        if self.default is MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = self.default
        target.add_argument(*self.flags, dest=self.dest, help=self.help, **kwargs)

    def convert(self, raw: Any) -> Any:
        """A recipe's TOML value, checked as the flag would check its text; ValueError if not."""
        if self.switch:
            if not isinstance(raw, bool):
                raise ValueError(f"expected true or false, got {raw!r}")
            return (not self.default) if raw else self.default
        if isinstance(raw, bool | dict) or (self.kind is None and not isinstance(raw, str)):
            raise ValueError(f"expected {'text' if self.kind is None else 'a value'}, got {raw!r}")
        text = ",".join(map(str, raw)) if isinstance(raw, list) else str(raw)  # 8e-3 -> "0.008"
        try:
            value = text if self.kind is None else self.kind(text)
        except argparse.ArgumentTypeError as exc:
            raise ValueError(str(exc)) from None
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{raw!r} is not one of {', '.join(map(str, self.choices))}")
        return value


def option(
    default: Any,
    *flags: str,
    help: str,
    group: str,
    kind: Callable[[str], Any] | None = None,
    choices: Iterable[Any] | None = None,
    metavar: str | None = None,
    only: When | tuple[When, ...] = (),
    task: str | None = None,
    recipe: bool = True,
    on_resume: str = "saved",
) -> Any:
    """A dataclass field that is also a command-line option; ``default`` MISSING: required.

    ``only``: where the option applies (typed elsewhere, it is refused); ``task``: the training
    task it belongs to; ``recipe``: whether a recipe file may set it; ``on_resume``: one of
    ``ON_RESUME``.
    """
    if on_resume not in ON_RESUME:
        raise ValueError(f"on_resume must be one of {ON_RESUME}, not {on_resume!r}")
    declared = {
        "flags": flags,
        "help": help,
        "group": group,
        "kind": kind,
        "choices": None if choices is None else tuple(choices),
        "metavar": metavar,
        "only": only if isinstance(only, tuple) else (only,),
        "task": task,
        "recipe": recipe,
        "on_resume": on_resume,
    }
    metadata = {"option": declared}
    return field(metadata=metadata) if default is MISSING else field(default=default, metadata=metadata)


def options_of(*classes: type) -> list[Option]:
    """The options the dataclasses' fields declare, class by class, in field order."""
    return [
        Option(dest=f.name, default=f.default, **f.metadata["option"])
        for cls in classes
        for f in fields(cls)
        if "option" in f.metadata
    ]


def add_options(
    parser: argparse.ArgumentParser, options: list[Option], groups: dict[str, str | None]
) -> None:
    """Add the options group by group, in the order of ``groups`` (name -> title; None: the
    parser's own section). The order of the flags dict a parse returns follows."""
    for group, title in groups.items():
        target = parser if title is None else parser.add_argument_group(title)
        for declared in options:
            if declared.group == group:
                declared.add_to(target)


def join_names(names: list[str]) -> str:
    """``--a``, ``--a and --b``, ``--a, --b and --c``."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def refusals(options: list[Option], flags: dict[str, Any], given: set[str]) -> list[str]:
    """One message for each condition that would make given options do nothing, in the order
    the options first name the conditions. ``given``: the destinations set by the user. A
    condition on a fact ``flags`` does not hold (not known yet) is left for a later call."""
    names = {declared.dest: declared.name for declared in options}
    conditions = list(dict.fromkeys(c for declared in options for c in declared.only))
    messages = []
    for condition in conditions:
        ignored = [o.name for o in options if condition in o.only and o.dest in given]
        if ignored and condition.dest in flags and not condition.holds(flags):
            messages.append(condition.refusal(ignored, flags, names.get(condition.dest, condition.dest)))
    return messages


def task_only(options: list[Option], task: str) -> dict[str, Any]:
    """The options that belong to ``task`` alone, with their defaults (tasks.check_task_flags)."""
    return {declared.dest: declared.default for declared in options if declared.task == task}


def on_resume(options: list[Option], what: str) -> frozenset[str]:
    """The destinations whose ``on_resume`` is ``what``."""
    return frozenset(declared.dest for declared in options if declared.on_resume == what)


def recipe_path(text: str) -> Path:
    """A recipe's file: a path to a .toml file, or a bare name in the project's configs/ folder."""
    if text.endswith(".toml") or "/" in text or "\\" in text:
        return Path(text)
    return CONFIGS_DIR / f"{text}.toml"


def shipped_recipes() -> str:
    """The names of the recipes in configs/, for --help and errors: "bench-gru256, bench-long, ..."."""
    return ", ".join(sorted(p.stem for p in CONFIGS_DIR.glob("*.toml")))


def recipe_name(text: str) -> str:
    """The argparse type of --config: the text as typed (saved so), once its file is found."""
    if not recipe_path(text).is_file():
        shipped = shipped_recipes()
        where = f"no file {text}" if recipe_path(text) == Path(text) else f"no recipe {text!r}"
        raise argparse.ArgumentTypeError(f"{where} (a .toml file, or one of {shipped})")
    return text


def read_recipe(text: str, options: list[Option]) -> dict[str, Any]:
    """A recipe's values by destination, each checked as its flag checks its own; a ValueError
    names the file and the key. Keys are the flags without their dashes (``context-rows = 3``)."""
    path = recipe_path(text)
    try:
        with path.open("rb") as file:
            table = tomllib.load(file)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML ({exc})") from None
    by_key = {flag.lstrip("-"): o for o in options if o.recipe for flag in o.flags}
    values = {}
    for key, raw in table.items():
        declared = by_key.get(key)
        if declared is None:
            hint = key.replace("_", "-")
            known = f" (did you mean {hint}?)" if hint in by_key else ""
            raise ValueError(f"{path}: {key}: not an option a recipe can set{known}")
        try:
            values[declared.dest] = declared.convert(raw)
        except ValueError as exc:
            raise ValueError(f"{path}: {key}: {exc}") from None
    return values
