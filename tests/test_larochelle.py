"""--binarize larochelle: the .amat reader, its splits and subsets, its one-line refusals, MNIST's
labels attached only where they fit, and a training run on the files end to end."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import run_main
from helpers import make_larochelle_folder, write_amat

import train
from rnn_mnist import larochelle as amat
from rnn_mnist import nll
from rnn_mnist.checkpoint import load_checkpoint
from rnn_mnist.data import (
    DataConfig,
    checkpoint_data_folder,
    load_binarized_mnist,
    load_test_digits,
    require_labels,
)
from rnn_mnist.errors import RnnMnistError
from rnn_mnist.larochelle import find_amat_folder, matching_labels, read_amat


@pytest.fixture
def amat_dir(tmp_path, monkeypatch):
    root = tmp_path / "bmnist"
    # The fixture's files are tiny: the counts they must hold are theirs, not the published ones.
    monkeypatch.setattr(amat, "AMAT_COUNTS", {"train": 48, "valid": 16, "test": 20})
    return root, make_larochelle_folder(root, train=48, valid=16, test=20)


def larochelle(root, **values) -> DataConfig:
    return DataConfig(data_dir=str(root), binarize="larochelle", **values)


def test_reader_round_trip_in_the_published_layout_and_any_other(tmp_path):
    digits = (np.random.default_rng(0).random((5, 784)) < 0.3).astype(np.uint8)
    write_amat(tmp_path / "a.amat", digits)
    assert torch.equal(read_amat(tmp_path / "a.amat"), torch.from_numpy(digits))
    # Tabs, runs of spaces, CRLF line ends and no newline at the end: the same digits.
    lines = ["\t".join(map(str, row)) + "  " for row in digits]
    (tmp_path / "b.amat").write_bytes("\r\n".join(lines).encode())
    assert torch.equal(read_amat(tmp_path / "b.amat"), torch.from_numpy(digits))


def test_splits_are_the_files_own_and_labels_are_mnists_by_position(amat_dir):
    root, made = amat_dir
    data = load_binarized_mnist(larochelle(root))
    for tensor, split in ((data.train_fixed, "train"), (data.val, "valid"), (data.test, "test")):
        assert torch.equal(tensor, torch.from_numpy(made[split][0]))
    known = {"train": data.train_labels, "valid": data.val_labels, "test": data.test_labels}
    for split, labels in known.items():
        assert labels.tolist() == made[split][1].tolist()
    assert data.num_train == 48 and data.train_grey is None and data.val_grey is None
    assert torch.equal(data.train_pixels(torch.Generator()), data.train_fixed)  # static: never redrawn
    assert "labels: MNIST's, matched by position" in data.notes[0]
    pixels, labels = load_test_digits(larochelle(root))
    assert torch.equal(pixels, data.test) and torch.equal(labels, data.test_labels)


def test_subsets_take_the_first_digits_and_the_validation_file_stays_whole(amat_dir):
    root, made = amat_dir
    data = load_binarized_mnist(larochelle(root, train_subset=10, test_subset=7))
    assert torch.equal(data.train_fixed, torch.from_numpy(made["train"][0][:10]))
    assert data.train_labels.tolist() == made["train"][1][:10].tolist()
    assert torch.equal(data.test, torch.from_numpy(made["test"][0][:7])) and len(data.test_labels) == 7
    assert len(data.val) == 16 and data.test_indices.tolist() == list(range(7))


def test_the_files_are_found_in_a_binarized_mnist_subfolder(amat_dir):
    root, _ = amat_dir
    (root / "binarized_mnist").mkdir()
    for path in root.glob("*.amat"):
        path.rename(root / "binarized_mnist" / path.name)
    assert find_amat_folder(root) == root / "binarized_mnist"
    assert len(load_binarized_mnist(larochelle(root)).val) == 16


def _malformed(root, case: str) -> str:
    """Spoil the valid file as ``case`` says; return what the one-line error must name."""
    path = root / "binarized_mnist_valid.amat"
    lines = path.read_text().splitlines()
    if case == "short line":
        lines[2] = lines[2][:-2]
        path.write_text("\n".join(lines) + "\n")
        return f"{path}: line 3 has 783 values, not 784"
    if case == "not binary":
        lines[4] = "2" + lines[4][1:]
        path.write_text("\n".join(lines) + "\n")
        return f"{path}: line 5 holds '2', not 0 or 1"
    if case == "a float":
        lines[0] = "0.5" + lines[0][1:]
        path.write_text("\n".join(lines) + "\n")
        return f"{path}: line 1 holds '0.5', not 0 or 1"
    if case == "blank line":
        path.write_text("\n".join([*lines[:3], "", *lines[3:]]) + "\n")
        return f"{path}: line 4 has 0 values, not 784"
    if case == "truncated":  # whole lines, cut short: each is a digit, there are too few
        path.write_text("\n".join(lines[:-1]) + "\n")
        return f"{path} holds 15 digits, not 16 (a truncated download?)"
    if case == "empty":
        path.write_text("")
        return f"{path} is empty"
    path.unlink()  # missing
    return f"{path} is missing"


CASES = ["short line", "not binary", "a float", "blank line", "truncated", "empty", "missing"]


@pytest.mark.parametrize("case", CASES)
def test_a_malformed_file_is_one_line_naming_the_file_and_line(amat_dir, case):
    root, _ = amat_dir
    expected = _malformed(root, case)
    with pytest.raises(RnnMnistError) as caught:
        load_binarized_mnist(larochelle(root))
    assert expected in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("case", ["short line", "truncated", "empty", "missing"])
def test_train_py_refuses_a_malformed_file_in_one_line(amat_dir, tmp_path, capsys, case):
    root, _ = amat_dir
    expected = _malformed(root, case)
    code, err = run_main(train.main, _train_args(tmp_path, root, "bad"), capsys)
    assert code != 0 and expected in err and len(err.strip().splitlines()) == 1


def test_no_files_at_all_says_where_they_were_looked_for(tmp_path):
    with pytest.raises(RnnMnistError, match=r"from .* or .*binarized_mnist: there is no"):
        load_binarized_mnist(larochelle(tmp_path))


def test_labels_are_attached_only_when_every_digit_fits_mnists_at_its_position(amat_dir):
    root, made = amat_dir
    digits, labels = made["test"]
    grey = torch.from_numpy(digits) * 200  # on pixels are grey: consistent
    assert matching_labels(torch.from_numpy(digits), grey, torch.from_numpy(labels)) is not None
    # The .amat test digits one position off from MNIST's: a Bernoulli draw cannot light a blank pixel.
    write_amat(root / "binarized_mnist_test.amat", np.roll(digits, 1, axis=0))
    pixels, unknown = load_test_digits(larochelle(root))
    assert unknown is None and len(pixels) == len(digits)
    data = load_binarized_mnist(larochelle(root))
    assert data.test_labels is None and data.train_labels is not None
    assert "labels unknown (test: MNIST's digits there do not match" in data.notes[0]


def test_one_stray_pixel_a_digit_is_forgiven_and_two_are_not():
    digits = torch.zeros(3, 784, dtype=torch.uint8)
    grey = torch.zeros(3, 784, dtype=torch.uint8)
    labels = torch.tensor([1, 2, 3])
    digits[0, :1] = 1
    assert matching_labels(digits, grey, labels).tolist() == [1, 2, 3]
    digits[2, :2] = 1
    assert matching_labels(digits, grey, labels) is None


def test_without_mnist_the_labels_are_unknown_and_what_needs_them_says_so(amat_dir, tmp_path, capsys):
    root, _ = amat_dir
    shutil.rmtree(root / "MNIST")
    data = load_binarized_mnist(larochelle(root))
    assert data.train_labels is data.val_labels is data.test_labels is None
    with pytest.raises(RnnMnistError, match="--condition label needs the digits' labels"):
        require_labels(None, "--condition label")
    code, err = run_main(train.main, _train_args(tmp_path, root, "cond", "--condition", "label"), capsys)
    assert code != 0 and "--condition label needs the digits' labels" in err
    assert len(err.strip().splitlines()) == 1
    # An unconditioned run needs none: its epoch pictures complete the first ten test digits.
    assert run_main(train.main, _train_args(tmp_path, root, "plain"), capsys)[0] == 0


def test_val_size_is_refused_with_larochelle(amat_dir, tmp_path, capsys):
    root, _ = amat_dir
    code, err = run_main(train.main, [*_train_args(tmp_path, root, "v"), "--val-size", "8"], capsys)
    assert code != 0 and "binarized_mnist_valid.amat" in err and "--val-size" in err


def _train_args(tmp_path, root, name, *extra):
    return [
        "--exp-name", name, "--exp-dir", str(tmp_path / "experiments"), "--data-dir", str(root),
        "--binarize", "larochelle", "--hidden", "8", "--batch-size", "32", "--epochs", "1",
        "--device", "cpu", "--no-tensorboard", *extra,
    ]  # fmt: skip


def test_train_py_on_the_amat_files_end_to_end(amat_dir, tmp_path, capsys):
    root, _ = amat_dir
    code, err = run_main(train.main, _train_args(tmp_path, root, "lm"), capsys)
    assert code == 0, err
    folder = tmp_path / "experiments" / "lm"
    log = (folder / "train.log").read_text()
    assert "48 train / 16 val / 20 test digits" in log
    assert "the benchmark's standard static test set" in log
    (entry,) = json.loads((folder / "metrics.json").read_text())["history"]
    assert entry["test_nll_se"] > 0
    assert f"{entry['test_nll_nats']:6.2f} ± {entry['test_nll_se']:.2f} nats" in log
    printed = _nll(tmp_path, capsys, "lm")
    assert "larochelle" in printed and "standard static test set" in printed


def test_a_bernoulli_run_beside_the_amat_files_points_at_them(amat_dir, tmp_path, capsys):
    root, _ = amat_dir
    args = [*_train_args(tmp_path, root, "st"), "--binarize", "static", "--val-size", "16"]
    args.remove("larochelle")
    args.remove("--binarize")
    assert run_main(train.main, args, capsys)[0] == 0
    log = (tmp_path / "experiments" / "st" / "train.log").read_text()
    assert "--binarize larochelle reads them" in log
    assert "one Bernoulli draw of MNIST's (data seed 0), standing in for the benchmark's static" in log
    printed = _nll(tmp_path, capsys, "st")
    assert "standing in for the benchmark's static test set" in printed


def _nll(tmp_path, capsys, name) -> str:
    assert nll.main(["--exp-dir", str(tmp_path / "experiments"), "--exp-name", name, "--device", "cpu"]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("needs", [("--condition", "label"), ("--task", "classify", "--binarized-input")])
def test_unknown_test_labels_are_refused_before_any_epoch(amat_dir, tmp_path, capsys, needs):
    root, made = amat_dir
    # Only the test file does not fit MNIST's digits: train and valid labels are known.
    write_amat(root / "binarized_mnist_test.amat", np.roll(made["test"][0], 1, axis=0))
    code, err = run_main(train.main, _train_args(tmp_path, root, "t", *needs), capsys)
    assert code != 0 and f"{needs[0]} {needs[1]} needs the digits' labels" in err
    assert len(err.strip().splitlines()) == 1
    folder = tmp_path / "experiments" / "t"
    assert not (folder / "metrics.json").exists() and not (folder / "checkpoint.ckpt").exists()


def test_a_larochelle_checkpoint_whose_folder_is_gone_names_the_amat_files(amat_dir, tmp_path, capsys):
    root, _ = amat_dir
    assert run_main(train.main, _train_args(tmp_path, root, "gone"), capsys)[0] == 0
    saved = load_checkpoint(tmp_path / "experiments" / "gone" / "checkpoint.ckpt")["data_config"]
    shutil.rmtree(root)
    with pytest.raises(RnnMnistError) as caught:
        checkpoint_data_folder(saved)
    message = str(caught.value)
    assert "Larochelle's .amat files are not in the folder" in message and "binarized_mnist_{train" in message
    assert "MNIST/raw" not in message and "\n" not in message
