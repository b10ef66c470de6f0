"""The project's contracts: set-up files agree, every flag is explained, the code is ruff clean."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from conftest import REPO

import train


def test_env_yml_installs_requirements_txt():
    env = (REPO / "env.yml").read_text()
    assert "- -r requirements.txt" in env and "python=" in env


def test_readme_commands_are_what_ci_runs():
    readme, ci = (REPO / "README.md").read_text(), (REPO / ".ci" / "run").read_text()
    for command in ("pip install -r requirements.txt", "python -m pytest -q"):
        assert command in readme and command in ci


def test_every_train_flag_is_explained():
    for action in train.build_parser()._actions:
        assert action.help, f"{action.option_strings} has no help text"


def test_help_runs_and_lists_the_flags():
    result = subprocess.run([sys.executable, "train.py", "--help"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0
    for flag in ("--exp-name", "--hidden", "--binarize", "--resume", "--overwrite", "--data-dir"):
        assert flag in result.stdout


@pytest.mark.skipif(shutil.which("ruff") is None and not (REPO / ".venv").exists(), reason="ruff missing")
def test_ruff_clean():
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "."], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
