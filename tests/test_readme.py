"""README.md: every command in it runs as written on a fresh clone.

Each command of the README's ``bash`` blocks is checked against the real parsers (flags, recipe
files, refusals) and against the order of the README: an experiment is evaluated or compared only
after a command above it trains it, unless it is a shipped one (``--exp-dir pretrained``). The
commands on shipped models then run for real, as typed, in a folder laid out as a fresh clone
beside ``../shared/mnist``, when a copy of MNIST is at hand; training commands are parsed, not run
(the shortest trains for minutes), and so are the two slowest evaluations (all 10,000 test digits).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, real_mnist_dir

import evaluate
import train
from rnn_mnist import compare, nll, sample
from rnn_mnist.parsers import parse_eval_options, parse_train_flags

README = REPO / "README.md"
CONTRACT = ("pip install -r requirements.txt", "python -m pytest -q")
# What a fresh clone holds that the commands read; plots/ and experiments/ are made by the commands.
CLONE_PARTS = ("train.py", "evaluate.py", "rnn_mnist", "configs", "pretrained")
# Shipped-model commands not run here for their time (30 s to a minute each on 2 cores): parsed only.
TOO_SLOW = ("--classify", "--num-digits 10000")
# The commands run as `python -m rnn_mnist.<module>` on an experiment, and their parsers.
ON_AN_EXPERIMENT = {"rnn_mnist.nll": nll.build_parser, "rnn_mnist.sample": sample.build_parser}


def readme_commands() -> list[str]:
    """The commands of the README's ``bash`` blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            command = line.split(" #")[0].strip()
            if command and not command.startswith("#"):
                commands.append(" ".join(command.split()))
    return commands


def _flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def _trained_experiments(commands: list[str]) -> list[set[str]]:
    """For each command, the experiment names trained by the commands before it."""
    trained, before = set(), []
    for command in commands:
        before.append(set(trained))
        argv = shlex.split(command)
        if argv[:2] == ["python", "train.py"] and "--help" not in argv:
            trained.add(_flag(argv, "--exp-name"))
    return before


COMMANDS = readme_commands()
TRAINED_BEFORE = dict(zip(COMMANDS, _trained_experiments(COMMANDS), strict=True))


def test_the_readme_holds_the_contract_commands_and_the_ones_a_newcomer_needs():
    assert COMMANDS[:2] == list(CONTRACT)
    scripts = {" ".join(shlex.split(c)[:2]) for c in COMMANDS}
    assert {"python train.py", "python evaluate.py", "python -m"} <= scripts


@pytest.mark.parametrize("command", [c for c in COMMANDS if c not in CONTRACT])
def test_every_readme_command_parses_and_names_an_experiment_that_exists_by_then(command, monkeypatch):
    monkeypatch.chdir(REPO)  # recipe paths such as configs/fast.toml are relative to the clone
    argv = shlex.split(command)
    assert argv[0] == "python", command
    if argv[1] == "train.py":
        if argv[2:] == ["--help"]:
            with pytest.raises(SystemExit) as exit_info:
                train.main(["--help"])
            assert exit_info.value.code == 0
            return
        flags, _ = parse_train_flags(train.build_parser(), argv[2:])
        if flags["resume"]:
            assert flags["exp_name"] in TRAINED_BEFORE[command], "resumes an experiment not trained above"
    elif argv[1] == "evaluate.py":
        options = parse_eval_options(evaluate.build_parser(), argv[2:])
        _check_exists(options.exp_dir, options.exp_name, command)
    elif argv[1] == "-m" and argv[2] in ON_AN_EXPERIMENT:
        args = ON_AN_EXPERIMENT[argv[2]]().parse_args(argv[3:])
        _check_exists(args.exp_dir, args.exp_name, command)
    else:
        assert argv[1:3] == ["-m", "rnn_mnist.compare"], f"a command this test does not know: {command}"
        args = compare.build_parser().parse_args(argv[3:])
        for folder in args.exp_dirs:
            assert folder.parent == Path("experiments") and folder.name in TRAINED_BEFORE[command]


def _check_exists(exp_dir: str, exp_name: str, command: str) -> None:
    """A shipped experiment, or one a command above trains."""
    if exp_dir == "pretrained":
        assert (REPO / "pretrained" / exp_name / "checkpoint.ckpt").is_file()
    else:
        assert exp_dir == "experiments" and exp_name in TRAINED_BEFORE[command]


SHIPPED = [
    c
    for c in COMMANDS
    if c.startswith("python evaluate.py")
    and "--exp-dir pretrained" in c
    and not any(s in c for s in TOO_SLOW)
]


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory) -> Path:
    """A folder laid out as a fresh clone (the README's files, no plots/ or experiments/) with
    ``../shared/mnist`` beside it, as the README's commands expect."""
    data = real_mnist_dir()
    if data is None:
        pytest.skip("no MNIST copy ($RNN_MNIST_DATA or ../shared/mnist)")
    root = tmp_path_factory.mktemp("clone")
    (root / "shared").mkdir()
    (root / "shared" / "mnist").symlink_to(data)
    clone = root / "rnn-mnist"
    clone.mkdir()
    for part in CLONE_PARTS:
        (clone / part).symlink_to(REPO / part)
    return clone


def test_some_shipped_model_commands_are_run():
    assert len(SHIPPED) >= 3


@pytest.mark.parametrize("command", SHIPPED)
def test_readme_commands_on_shipped_models_run_as_typed(command, fresh_clone):
    argv = shlex.split(command)
    env = {k: v for k, v in os.environ.items() if k != "RNN_MNIST_DATA"}  # the README's --data-dir alone
    result = subprocess.run(
        [sys.executable, *argv[1:]], cwd=fresh_clone, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    exp_name = _flag(argv, "--exp-name")
    assert f"wrote plots/{exp_name}/" in result.stdout
    assert (fresh_clone / "plots" / exp_name / "metrics.json").is_file()


# The sample command reads no MNIST and takes seconds: run as typed (the likelihood over all
# 10,000 test digits takes a minute on 2 cores, and is parsed only).
DRAWN = [c for c in COMMANDS if c.startswith("python -m rnn_mnist.sample") and "--exp-dir pretrained" in c]


def test_the_readme_draws_digits_with_a_shipped_model():
    assert DRAWN


@pytest.mark.parametrize("command", DRAWN)
def test_readme_sample_commands_run_as_typed(command, fresh_clone):
    argv = shlex.split(command)
    result = subprocess.run(
        [sys.executable, *argv[1:]], cwd=fresh_clone, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    picture = Path("plots") / f"{_flag(argv, '--exp-name')}-samples.png"
    assert f"wrote {picture}" in result.stdout and (fresh_clone / picture).is_file()
