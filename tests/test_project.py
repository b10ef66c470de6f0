"""The project's contracts: set-up files agree, every flag is explained, the code is ruff clean."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from conftest import REPO

import evaluate
import train


def test_env_yml_installs_requirements_txt():
    env = (REPO / "env.yml").read_text()
    assert "- -r requirements.txt" in env and "python=" in env


def test_readme_commands_are_what_ci_runs():
    readme, ci = (REPO / "README.md").read_text(), (REPO / ".ci" / "run").read_text()
    for command in ("pip install -r requirements.txt", "python -m pytest -q"):
        assert command in readme and command in ci


@pytest.mark.parametrize("script", [train, evaluate], ids=["train", "evaluate"])
def test_every_flag_is_explained(script):
    for action in script.build_parser()._actions:
        assert action.help, f"{action.option_strings} has no help text"


@pytest.mark.parametrize(
    "script, flags",
    [
        ("train.py", ("--exp-name", "--hidden", "--binarize", "--resume", "--overwrite", "--data-dir")),
        ("evaluate.py", ("--exp-name", "--mask-pixels", "--sampling", "--samples", "--indices", "--no-gifs")),
    ],
)
def test_help_runs_and_lists_the_flags(script, flags):
    result = subprocess.run([sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0
    for flag in flags:
        assert flag in result.stdout


def test_help_shows_value_defaults_but_not_switch_defaults():
    result = subprocess.run(
        [sys.executable, "evaluate.py", "--help"], cwd=REPO, capture_output=True, text=True
    )
    text = " ".join(result.stdout.split())  # undo argparse's line wrapping
    assert "(default: 284)" in text  # --mask-pixels
    assert "(default: True)" not in text  # --no-gifs / --no-judge would read backwards


@pytest.mark.skipif(shutil.which("ruff") is None and not (REPO / ".venv").exists(), reason="ruff missing")
def test_ruff_clean():
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "."], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
