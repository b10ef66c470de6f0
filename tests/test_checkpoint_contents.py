"""Checkpoints of the right format but odd contents, read back by --resume and by evaluate.py:
one line each, or a load where the oddity is harmless (issue 11, findings 14 and 15)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_main, tiny_train_args

import evaluate
import train
from rnn_mnist.judge import DigitJudge, save_judge, stored_state

READERS = ("resume", "evaluate")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mnist_dir) -> Path:
    """A one-epoch experiment to copy and damage (hidden 8)."""
    exp_dir = tmp_path_factory.mktemp("contents")
    assert train.main(tiny_train_args(exp_dir, mnist_dir, "base", "--epochs", "1")) == 0
    return exp_dir / "base"


@pytest.fixture
def copy(trained, tmp_path) -> Path:
    folder = tmp_path / "experiments" / "odd"
    shutil.copytree(trained, folder)
    # As if trained here: the copy then differs from the original only by what a test changes.
    edit_checkpoint(folder, lambda c: c["config"].update(exp_dir=str(folder.parent), exp_name=folder.name))
    return folder


def edit_checkpoint(folder: Path, change) -> None:
    path = folder / "checkpoint.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    change(checkpoint)
    torch.save(checkpoint, path)


def read_back(reader: str, folder: Path, mnist_dir: Path, capsys) -> tuple[int, str]:
    """Resume the experiment in ``folder`` for one more epoch, or evaluate two digits of it."""
    capsys.readouterr()
    where = ["--exp-dir", str(folder.parent), "--exp-name", folder.name, "--data-dir", str(mnist_dir)]
    if reader == "resume":
        return run_main(train.main, [*where, "--resume", "--epochs", "2"], capsys)
    # fmt: off
    argv = [*where, "--out-dir", str(folder.parent / "out"), "--num-digits", "2", "--no-gifs", "--no-judge"]
    # fmt: on
    return run_main(evaluate.main, argv, capsys)


def assert_one_line_error(code: int, err: str, *phrases: str) -> None:
    assert code == 2, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    for phrase in phrases:
        assert phrase in err


@pytest.mark.parametrize("reader", READERS)
def test_a_model_config_that_is_not_a_dict(copy, mnist_dir, capsys, reader):
    edit_checkpoint(copy, lambda c: c.update(model_config=list(c["model_config"].items())))
    assert_one_line_error(*read_back(reader, copy, mnist_dir, capsys), "model_config is a list")


@pytest.mark.parametrize("reader", READERS)
def test_unknown_data_config_keys_from_a_newer_version_are_ignored(copy, mnist_dir, capsys, reader):
    edit_checkpoint(copy, lambda c: c["data_config"].update(invented_later=3))
    code, err = read_back(reader, copy, mnist_dir, capsys)
    assert code == 0, err


@pytest.mark.parametrize("reader", READERS)
def test_a_checkpoint_whose_weights_do_not_fit_its_config(copy, mnist_dir, capsys, reader):
    edit_checkpoint(copy, lambda c: c["model_config"].update(hidden_size=16))  # the weights are 8 wide
    code, err = read_back(reader, copy, mnist_dir, capsys)
    assert_one_line_error(code, err, "weights do not fit", "more")


@pytest.mark.parametrize("reader", READERS)
def test_a_digit_judge_in_place_of_a_training_checkpoint(copy, mnist_dir, capsys, reader):
    save_judge(copy / "checkpoint.ckpt", stored_state(DigitJudge()), {"test_accuracy": {}})
    code, err = read_back(reader, copy, mnist_dir, capsys)
    assert_one_line_error(code, err, "not an rnn-mnist checkpoint", "checkpoint.ckpt")


@pytest.mark.parametrize("reader", READERS)
def test_a_checkpoint_that_would_run_code_is_refused_and_says_why(copy, mnist_dir, capsys, reader, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    edit_checkpoint(copy, lambda c: c.update(model_state=Exploit()))
    code, err = read_back(reader, copy, mnist_dir, capsys)
    assert_one_line_error(code, err, "would run code", f"Unsupported global: {os.system.__module__}.system")
    assert "weights_only=False" not in err and "weights_only` set to `False" not in err
    assert not marker.exists()
