"""rnn_mnist/checkpoint.py: experiment folders, atomic writes, checkpoints with odd contents."""

from __future__ import annotations

import errno
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_main, tiny_train_args, with_flags
from helpers import strict_json

import evaluate
import train
from rnn_mnist import checkpoint as checkpoint_module
from rnn_mnist import evaluation, training
from rnn_mnist.checkpoint import ExperimentPaths, atomic_write, load_checkpoint, save_metrics
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


def the_error(err: str) -> str:
    """The one error line of a run's stderr (progress lines may come before it), checking there is one."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, mnist_dir):
    root = tmp_path_factory.mktemp("files")
    exp_dir = root / "experiments"
    assert train.main(tiny_train_args(exp_dir, mnist_dir, "tiny", "--epochs", "1")) == 0
    # fmt: off
    return root, ["--exp-name", "tiny", "--exp-dir", str(exp_dir), "--data-dir", str(mnist_dir),
                  "--no-judge", "--no-gifs", "--num-digits", "2"]
    # fmt: on


@pytest.fixture
def locked(tmp_path, monkeypatch) -> Path:
    """A folder nothing may be created in, as for a user without write permission (the tests may
    run as root, which chmod does not stop)."""
    folder = tmp_path / "locked"
    folder.mkdir()
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if folder in self.parents:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    return folder


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


def test_exp_dir_that_is_a_file(tmp_path, mnist_dir, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    code, err = run_main(train.main, tiny_train_args(a_file, mnist_dir, "x"), capsys)
    assert code == 2 and f"{a_file} is a file, not a folder" in the_error(err)
    assert a_file.read_text() == "not a folder"


def test_unwritable_exp_dir(mnist_dir, capsys, locked):
    code, err = run_main(train.main, tiny_train_args(locked, mnist_dir, "x"), capsys)
    assert code == 2 and "Permission denied" in the_error(err) and str(locked) in err


def test_too_long_exp_name(tmp_path, mnist_dir, capsys, experiment):
    name = "a" * 300  # was "File name too long" from deep inside pathlib
    code, err = run_main(train.main, tiny_train_args(tmp_path, mnist_dir, name), capsys)
    assert code == 2 and "300 characters long; at most 100" in the_error(err)
    _, args = experiment
    code, err = run_main(evaluate.main, with_flags(args, "--exp-name", name), capsys)
    assert code == 2 and "300 characters long" in the_error(err)


@pytest.mark.parametrize("where", ["is a file", "under a file"])
def test_evaluate_out_dir_that_is_a_file(experiment, capsys, where):
    root, args = experiment
    a_file = root / f"file-{where.replace(' ', '-')}"
    a_file.write_text("x")
    out = a_file if where == "is a file" else a_file / "out"
    code, err = run_main(evaluate.main, [*args, "--out-dir", str(out)], capsys)
    assert code == 2 and f"{a_file} is a file, not a folder" in the_error(err)


def test_unwritable_evaluate_out_dir(experiment, capsys, locked):
    _, args = experiment
    code, err = run_main(evaluate.main, [*args, "--out-dir", str(locked / "out")], capsys)
    assert code == 2 and "Permission denied" in the_error(err)


def test_disk_full_during_training_keeps_the_last_checkpoint(tmp_path, mnist_dir, capsys, monkeypatch):
    real_save, calls = training.save_checkpoint, {"n": 0}

    def save_until_the_disk_is_full(path, payload):
        calls["n"] += 1
        if calls["n"] == 2:  # the save after epoch 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_save(path, payload)

    monkeypatch.setattr(training, "save_checkpoint", save_until_the_disk_is_full)
    code, err = run_main(train.main, tiny_train_args(tmp_path, mnist_dir, "full"), capsys)
    line = the_error(err)
    assert code == 2 and "could not save epoch 1" in line and "no space left" in line
    assert "checkpoint after epoch 0" in line and "intact" in line
    assert load_checkpoint(tmp_path / "full" / "checkpoint.ckpt")["epoch"] == 0


def test_disk_full_during_evaluation(experiment, capsys, monkeypatch):
    root, args = experiment

    def full(path, write):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(evaluation, "atomic_write", full)
    code, err = run_main(evaluate.main, [*args, "--out-dir", str(root / "full")], capsys)
    assert code == 2 and "no space left" in the_error(err)


def test_a_failed_atomic_write_names_its_file_and_leaves_nothing(tmp_path, monkeypatch):
    # A write that fails (a full disk) raises an OSError without a file name; atomic_write adds it.
    target = tmp_path / "metrics.json"

    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint_module.os, "fsync", fsync)
    with pytest.raises(OSError) as caught:
        atomic_write(target, lambda f: f.write(b"{}"))
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []


# Finding 20: strict JSON only, and flags that would be ignored are refused.
def test_metrics_json_is_strict_json(tmp_path):
    paths = ExperimentPaths(tmp_path)
    history = [{"epoch": 1, "test_nll_nats": math.inf, "teacher_forcing_prob": math.nan, "batch_losses": []}]
    save_metrics(paths, {"config": {"ss_k": 1.0}, "history": history})
    readable = strict_json(paths.metrics_json.read_text())
    assert readable["history"][0]["test_nll_nats"] is None  # null: JSON has no infinity
