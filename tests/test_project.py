"""The project's contracts: set-up files agree, every flag is explained, the code is ruff clean."""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
import tomllib

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


def _requirements() -> tuple[list[str], list[str]]:
    """requirements.txt's run-time lines (before its test tools) and its other lines."""
    lines = [line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    lines = [line for line in lines if line]
    tools = next(i for i, line in enumerate(lines) if line.startswith("# tests"))
    return [x for x in lines[:tools] if not x.startswith("#")], [
        x for x in lines[tools:] if not x.startswith("#")
    ]


def test_the_set_up_installs_the_package_and_its_dependencies_agree():
    """Issue 21, finding 1: the package could not be installed (pyproject.toml held tool settings only)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    run_time, others = _requirements()
    assert project["name"] == "rnn-mnist" and project["requires-python"] == ">=3.11"
    assert project["dependencies"] == run_time
    assert "-e ." in others  # `pip install -r requirements.txt` installs the package itself


def test_every_file_the_package_reads_at_run_time_is_package_data():
    settings = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages, data = settings["packages"], settings["package-data"]
    folders = {p.parent.relative_to(REPO) for p in (REPO / "rnn_mnist").rglob("*.py")}
    assert sorted(".".join(f.parts) for f in folders) == sorted(packages)
    from rnn_mnist.judge import SHIPPED_JUDGE, info_path
    from rnn_mnist.kernels.native import SOURCE

    # What the code opens beside itself: the shipped judge and its description, the fused step's source.
    for needed in (SHIPPED_JUDGE, info_path(SHIPPED_JUDGE), SOURCE):
        assert needed.is_file()
        package = needed.parent
        while ".".join(package.relative_to(REPO).parts) not in packages:
            package = package.parent
        inside = needed.relative_to(package).as_posix()
        patterns = data.get(".".join(package.relative_to(REPO).parts), [])
        assert any(fnmatch.fnmatch(inside, pattern) for pattern in patterns), f"{needed} is not package data"


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
