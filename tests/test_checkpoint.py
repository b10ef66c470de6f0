"""rnn_mnist/checkpoint.py: experiment folders, atomic writes, checkpoints with odd contents."""

from __future__ import annotations

import errno
import math
import os
import pickle
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_main, tiny_train_args, with_flags
from helpers import strict_json

import evaluate
import train
from rnn_mnist import checkpoint as checkpoint_module
from rnn_mnist import evaluation, training
from rnn_mnist.checkpoint import ExperimentPaths, atomic_write, load_checkpoint, save_metrics, weights_sha256
from rnn_mnist.errors import RnnMnistError
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


# Issue 23, finding 10: the weights' sha256 is recorded at save time and checked at every load; the
# configs' values are checked too.
def flip_bytes(tensor: torch.Tensor, count: int = 1000) -> None:
    """Invert ``count`` bytes in the middle of ``tensor`` (all of them if it holds fewer), in place,
    as a damaged disk or a careless edit would."""
    raw = tensor.view(torch.uint8).reshape(-1)
    start = max(0, (len(raw) - count) // 2)
    raw[start : start + count] ^= 0xFF


def test_a_new_checkpoint_records_the_sha256_of_its_weights(trained):
    checkpoint = torch.load(trained / "checkpoint.ckpt", weights_only=True)
    assert checkpoint["weights_sha256"] == weights_sha256(checkpoint["model_state"])


@pytest.mark.parametrize("reader", READERS)
def test_weights_changed_after_saving_are_refused(copy, mnist_dir, capsys, reader):
    edit_checkpoint(copy, lambda c: flip_bytes(c["model_state"]["rnn.weight_hh_l0"]))
    code, err = read_back(reader, copy, mnist_dir, capsys)
    assert_one_line_error(code, err, "checkpoint.ckpt", "not the ones saved", "corrupt or was changed")


@pytest.mark.parametrize("reader", READERS)
def test_a_checkpoint_that_records_no_hash_loads_as_before(copy, mnist_dir, capsys, reader):
    """Checkpoints saved before hashes were recorded have nothing to check their weights against."""

    def forget_the_hash_and_change_a_weight(checkpoint: dict) -> None:
        checkpoint.pop("weights_sha256", None)
        flip_bytes(checkpoint["model_state"]["head.bias"], 1)

    edit_checkpoint(copy, forget_the_hash_and_change_a_weight)
    code, err = read_back(reader, copy, mnist_dir, capsys)
    assert code == 0, err


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("threshold", [7.0, math.nan])
def test_a_data_config_threshold_out_of_range_is_refused(copy, mnist_dir, capsys, reader, threshold):
    """A threshold of 7.0 or NaN blanked every pixel, and accuracy read 1.000."""
    edit_checkpoint(copy, lambda c: c["data_config"].update(threshold=threshold))
    code, err = read_back(reader, copy, mnist_dir, capsys)
    assert_one_line_error(code, err, "checkpoint.ckpt", "invalid", "threshold")


NON_FINITE_CASES = [("config", "lr"), ("config", "clip"), ("model_config", "dropout")]


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize(("key", "field"), NON_FINITE_CASES)
def test_a_config_number_that_is_not_finite_is_refused(copy, mnist_dir, capsys, reader, key, field):
    edit_checkpoint(copy, lambda c: c[key].update({field: math.inf if field == "clip" else math.nan}))
    code, err = read_back(reader, copy, mnist_dir, capsys)
    assert_one_line_error(code, err, "checkpoint.ckpt", f"{key}.{field}", "not a finite number")


def test_a_raw_pickle_checkpoint_is_one_line_on_stderr_and_no_warning(copy, mnist_dir):
    """Issue 23, finding 12: torch's UserWarning about the pickle protocol came first, in two lines."""
    plain = {"format": "rnn-mnist-checkpoint", "version": 1, "epoch": 1, "config": {"lr": 0.01}}
    with (copy / "checkpoint.ckpt").open("wb") as f:
        pickle.dump(plain, f, protocol=4)  # a bare pickle, not a torch archive
    # fmt: off
    argv = ["--exp-dir", str(copy.parent), "--exp-name", copy.name, "--data-dir", str(mnist_dir),
            "--out-dir", str(copy.parent / "out"), "--num-digits", "2", "--no-gifs", "--no-judge"]
    # fmt: on
    result = subprocess.run(
        [sys.executable, "evaluate.py", *argv], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2 and result.stdout == "", result
    assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1, result.stderr
    assert "not a readable rnn-mnist checkpoint" in result.stderr
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(RnnMnistError, match="not a readable"):
            load_checkpoint(copy / "checkpoint.ckpt")
    assert caught == []


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, mnist_dir) -> Path:
    """A one-epoch permuted classify experiment to copy and damage."""
    exp_dir = tmp_path_factory.mktemp("classifier")
    argv = tiny_train_args(exp_dir, mnist_dir, "cls", "--task", "classify", "--permute", "--epochs", "1")
    assert train.main(argv) == 0
    return exp_dir / "cls"


def _set_reading_order(checkpoint: dict, index: int, value: int) -> None:
    """Change one entry of the reading order, and record the hash of the changed weights (as a
    deliberate edit would), so that only the order itself can give it away."""
    checkpoint["model_state"]["reading_order"][index] = value
    checkpoint["weights_sha256"] = weights_sha256(checkpoint["model_state"])


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize(("index", "value"), [(0, 999), (1, -1), ("repeat", None)])
def test_a_classifier_whose_reading_order_is_not_a_permutation_is_refused(
    classifier, tmp_path, mnist_dir, capsys, reader, index, value
):
    """Issue 23, finding 8: reading_order[0] = 999 gave an IndexError traceback; repeated or
    negative entries were accepted, and the model read some pixels twice and others never."""
    folder = tmp_path / "experiments" / "odd"
    shutil.copytree(classifier, folder)
    order = torch.load(folder / "checkpoint.ckpt", weights_only=True)["model_state"]["reading_order"]
    if index == "repeat":
        index, value = 1, int(order[0])
    edit_checkpoint(folder, lambda c: _set_reading_order(c, index, value))
    capsys.readouterr()
    where = ["--exp-dir", str(folder.parent), "--exp-name", folder.name, "--data-dir", str(mnist_dir)]
    if reader == "resume":
        code, err = run_main(train.main, [*where, "--resume", "--epochs", "2"], capsys)
    else:  # a classifier is evaluated by its accuracy: no completion flags
        code, err = run_main(evaluate.main, [*where, "--out-dir", str(tmp_path / "out")], capsys)
    assert_one_line_error(code, err, "checkpoint.ckpt", "reading_order is not a permutation")
