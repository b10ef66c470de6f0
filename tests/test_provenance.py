"""rnn_mnist/provenance.py: the git commit (and whether the checkout had changes) that every
training epoch records, and None where there is no checkout to ask."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, tiny_train_args
from helpers import strict_json

import train
from rnn_mnist import provenance, training
from rnn_mnist.checkpoint import load_checkpoint

GIT = shutil.which("git")


def git(folder: Path, *args: str) -> str:
    command = ["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@t", *args]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A git repository holding a package folder ``pkg`` at its first commit."""
    if GIT is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "__init__.py").write_text("")
    (repo / ".gitignore").write_text(".venv/\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "first")
    return repo


def test_the_commit_of_a_checkout_is_recorded_and_dirty_when_it_has_changes(checkout):
    package, commit = checkout / "pkg", git(checkout, "rev-parse", "HEAD")
    assert provenance.code_version(package) == {"git_commit": commit, "git_dirty": False}
    (package / "__init__.py").write_text("x = 1\n")
    assert provenance.code_version(package) == {"git_commit": commit, "git_dirty": True}


def test_no_commit_is_recorded_outside_a_checkout_or_without_git(tmp_path, checkout, monkeypatch):
    unknown = {"git_commit": None, "git_dirty": None}
    (tmp_path / "loose").mkdir()
    assert provenance.code_version(tmp_path / "loose") == unknown
    installed = checkout / ".venv" / "site-packages" / "pkg"  # a copy git ignores, inside a checkout
    installed.mkdir(parents=True)
    (installed / "__init__.py").write_text("")
    assert provenance.code_version(installed) == unknown
    monkeypatch.setenv("PATH", str(tmp_path / "loose"))  # no git to run
    assert provenance.code_version(checkout / "pkg") == unknown


def test_every_epoch_records_the_commit_in_the_checkpoint_and_metrics(tmp_path, mnist_dir, monkeypatch):
    version = {"git_commit": "0123456789abcdef0123456789abcdef01234567", "git_dirty": True}
    monkeypatch.setattr(training, "code_version", lambda: dict(version))
    assert train.main(tiny_train_args(tmp_path, mnist_dir, "commit")) == 0
    history = load_checkpoint(tmp_path / "commit" / "checkpoint.ckpt")["history"]  # weights_only=True
    assert all(entry["compute"].items() >= version.items() for entry in history)
    metrics = strict_json((tmp_path / "commit" / "metrics.json").read_text())
    assert all(entry["compute"]["git_commit"] == version["git_commit"] for entry in metrics["history"])


@pytest.mark.skipif(GIT is None or not (REPO / ".git").exists(), reason="not run from a git checkout")
def test_a_run_from_this_checkout_records_its_head(tmp_path, mnist_dir):
    assert train.main(tiny_train_args(tmp_path, mnist_dir, "head", "--epochs", "1")) == 0
    compute = load_checkpoint(tmp_path / "head" / "checkpoint.ckpt")["history"][0]["compute"]
    assert compute["git_commit"] == git(REPO, "rev-parse", "HEAD")
    assert isinstance(compute["git_dirty"], bool)
