"""The data module reads and checks the raw IDX files, finds them where they are, and binarises
the digits as documented."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    TEST_DIGITS,
    TRAIN_DIGITS,
    make_mnist_folder,
    run_main,
    synthetic_digits,
    tiny_train_args,
    write_idx_images,
    write_idx_labels,
)

import evaluate
import train
from rnn_mnist import mnist_files
from rnn_mnist.checkpoint import load_checkpoint
from rnn_mnist.data import (
    DataConfig,
    binarize,
    checkpoint_data_folder,
    load_binarized_mnist,
    load_test_digits,
)
from rnn_mnist.errors import RnnMnistError
from rnn_mnist.mnist_files import load_mnist_split


def test_reads_the_idx_fixture(mnist_dir):
    grey, labels = load_mnist_split(str(mnist_dir), train=True)
    images, expected_labels = synthetic_digits(TRAIN_DIGITS, seed=1)
    assert grey.shape == (TRAIN_DIGITS, 784) and grey.dtype == torch.uint8
    assert torch.equal(grey, torch.from_numpy(images.reshape(-1, 784)))
    assert labels.tolist() == expected_labels.tolist()


def test_environment_variable_names_the_data_folder(mnist_dir, monkeypatch):
    monkeypatch.setenv("RNN_MNIST_DATA", str(mnist_dir))
    grey, _ = load_mnist_split(None, train=False)
    assert len(grey) == TEST_DIGITS


def test_threshold_binarisation():
    grey = torch.tensor([[0, 25, 26, 128, 255]], dtype=torch.uint8)
    assert binarize(grey, "threshold", 0.1).tolist() == [[0, 0, 1, 1, 1]]
    assert binarize(grey, "threshold", 0.5).tolist() == [[0, 0, 0, 1, 1]]


def test_bernoulli_binarisation_follows_grey_levels():
    grey = torch.full((200, 784), 64, dtype=torch.uint8)
    pixels = binarize(grey, "static", 0.1, torch.Generator().manual_seed(0))
    assert set(pixels.unique().tolist()) == {0, 1}
    assert abs(pixels.float().mean().item() - 64 / 255) < 0.01


def test_split_sizes_and_disjoint_validation(mnist_dir):
    config = DataConfig(data_dir=str(mnist_dir), val_size=16, test_subset=30)
    data = load_binarized_mnist(config)
    train = data.train_pixels(torch.Generator())
    assert train.shape == (TRAIN_DIGITS - 16, 784)
    assert data.val.shape == (16, 784) and data.test.shape == (30, 784)
    assert data.test_indices.tolist() == list(range(30))
    # Every fixture digit is unique (noise), so disjoint rows mean disjoint digits.
    train_rows, val_rows = {tuple(r) for r in train.tolist()}, {tuple(r) for r in data.val.tolist()}
    assert len(train_rows) + len(val_rows) == TRAIN_DIGITS and not train_rows & val_rows
    subset = load_binarized_mnist(DataConfig(data_dir=str(mnist_dir), val_size=16, train_subset=50))
    assert torch.equal(subset.train_pixels(torch.Generator()), train[:50])


def test_validation_split_is_fixed_by_the_data_seed(mnist_dir):
    a = load_binarized_mnist(DataConfig(data_dir=str(mnist_dir), val_size=16, data_seed=0))
    b = load_binarized_mnist(DataConfig(data_dir=str(mnist_dir), val_size=16, data_seed=0))
    c = load_binarized_mnist(DataConfig(data_dir=str(mnist_dir), val_size=16, data_seed=1))
    assert torch.equal(a.val, b.val)
    assert not torch.equal(a.val_labels, c.val_labels) or not torch.equal(a.val, c.val)


def test_dynamic_redraws_training_pixels_but_not_evaluation_pixels(mnist_dir):
    config = DataConfig(data_dir=str(mnist_dir), binarize="dynamic", val_size=16)
    data = load_binarized_mnist(config)
    generator = torch.Generator().manual_seed(0)
    first, second = data.train_pixels(generator), data.train_pixels(generator)
    assert not torch.equal(first, second)
    assert torch.equal(load_binarized_mnist(config).test, data.test)
    assert torch.equal(load_binarized_mnist(config).val, data.val)


def test_static_is_fixed_and_matches_test_loader(mnist_dir):
    config = DataConfig(data_dir=str(mnist_dir), binarize="static", val_size=16)
    data = load_binarized_mnist(config)
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(data.train_pixels(generator), data.train_pixels(generator))
    test, labels = load_test_digits(config)
    assert torch.equal(test, data.test) and torch.equal(labels, data.test_labels)
    other = load_binarized_mnist(
        DataConfig(data_dir=str(mnist_dir), binarize="static", val_size=16, data_seed=5)
    )
    assert not torch.equal(other.test, data.test)


def test_missing_data_offline_says_how_to_fix(tmp_path):
    with pytest.raises(RnnMnistError, match="--data-dir"):
        load_mnist_split(str(tmp_path), train=True)


def test_corrupt_idx_file_is_a_clear_error(tmp_path, mnist_dir):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(mnist_dir, copy)
    (copy / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"not an idx file")
    with pytest.raises(RnnMnistError, match="could not read"):
        load_mnist_split(str(copy), train=True)


def test_validation_larger_than_training_set_is_refused(mnist_dir):
    with pytest.raises(RnnMnistError, match="val-size"):
        load_binarized_mnist(DataConfig(data_dir=str(mnist_dir), val_size=TRAIN_DIGITS))


# Issue 11, finding 18: the data folder, given as the MNIST or raw folder itself, or one that does not
# exist.
@pytest.mark.parametrize("given", ["MNIST", "MNIST/raw"])
def test_the_mnist_or_raw_folder_given_directly_is_used(mnist_dir, given):
    before = sorted(mnist_dir.rglob("*"))
    grey, labels = load_mnist_split(str(mnist_dir / given), train=True)
    assert grey.shape == (TRAIN_DIGITS, 784) and len(labels) == TRAIN_DIGITS
    assert sorted(mnist_dir.rglob("*")) == before  # no MNIST/raw/MNIST/raw made for a download


def test_a_failed_download_creates_no_folders(tmp_path):
    with pytest.raises(RnnMnistError, match="could not be downloaded"):
        load_mnist_split(str(tmp_path / "nonexistent" / "x"), train=True)
    assert list(tmp_path.iterdir()) == []


def test_a_raw_folder_missing_a_file_says_which_and_downloads_nothing(tmp_path, mnist_dir):
    raw = tmp_path / "raw"
    shutil.copytree(mnist_dir / "MNIST" / "raw", raw)
    (raw / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(RnnMnistError, match="but not t10k-labels-idx1-ubyte"):
        load_mnist_split(str(raw), train=True)
    assert sorted(p.name for p in raw.iterdir()) == [
        "t10k-images-idx3-ubyte",
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
    ]


def test_gzipped_raw_files_are_read_as_they_are(tmp_path, mnist_dir):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for path in (mnist_dir / "MNIST" / "raw").iterdir():
        (raw / f"{path.name}.gz").write_bytes(gzip.compress(path.read_bytes()))
    grey, _ = load_mnist_split(str(tmp_path), train=False)
    assert torch.equal(grey, load_mnist_split(str(mnist_dir), train=False)[0])


# Finding 19: files that do not belong together, or are not what their names say.
def _replace_train_images_by_test_images(raw):
    shutil.copy(raw / "t10k-images-idx3-ubyte", raw / "train-images-idx3-ubyte")


def _swap_images_and_labels(raw):
    images, labels = raw / "train-images-idx3-ubyte", raw / "train-labels-idx1-ubyte"
    data = images.read_bytes()
    images.write_bytes(labels.read_bytes())
    labels.write_bytes(data)


def _random_bytes(raw):
    (raw / "train-images-idx3-ubyte").write_bytes(np.random.default_rng(0).bytes(5000))


def _truncate(raw):
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])


def _other_image_size(raw):
    write_idx_images(raw / "train-images-idx3-ubyte", np.zeros((TRAIN_DIGITS, 32, 32)))


def _labels_above_nine(raw):
    write_idx_labels(raw / "train-labels-idx1-ubyte", np.full(TRAIN_DIGITS, 12))


MISMATCHES = {
    # Before, accepted: training ran on 40 digits whose labels no longer lined up.
    "train images replaced by test images": (
        _replace_train_images_by_test_images,
        f"train-images-idx3-ubyte holds {TEST_DIGITS} images but train-labels-idx1-ubyte holds "
        f"{TRAIN_DIGITS} labels",
    ),
    "images and labels swapped": (_swap_images_and_labels, "holds labels, not images: are the files swapped"),
    "random bytes": (_random_bytes, "is not an MNIST images file"),  # before: an empty reason
    "truncated": (_truncate, "truncated"),
    "32x32 images": (_other_image_size, "holds 32x32 images; MNIST's are 28x28"),
    "labels above 9": (_labels_above_nine, "labels above 9"),
}


@pytest.mark.parametrize("case", list(MISMATCHES))
def test_mismatched_or_foreign_files_give_a_clear_reason(tmp_path, mnist_dir, case):
    change, message = MISMATCHES[case]
    copy = tmp_path / "copy"
    shutil.copytree(mnist_dir, copy)
    change(copy / "MNIST" / "raw")
    with pytest.raises(RnnMnistError, match="could not read MNIST") as caught:
        load_mnist_split(str(copy), train=True)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("threshold", 7.0),
        ("threshold", float("nan")),
        ("threshold", float("inf")),
        ("threshold", -0.1),
        ("threshold", 1.0),
        ("threshold", "0.1"),
        ("binarize", "otsu"),
        ("val_size", -1),
        ("val_size", 2.5),
        ("train_subset", 0),
        ("test_subset", True),
        ("data_seed", -1),
        ("data_seed", 2**32),
        ("data_dir", 5),
        ("data_folder", 5),
    ],
)
def test_a_data_config_value_out_of_its_range_is_refused(field, value):
    """Issue 23, finding 10: a threshold of 7.0 or NaN blanked every pixel without a word. The flags
    check their text; the config checks what a checkpoint (or code) hands it."""
    with pytest.raises(ValueError, match=field):
        DataConfig(**{field: value})
    with pytest.raises(ValueError, match=field):
        DataConfig.from_dict({field: value})


def test_data_config_values_in_range_are_accepted():
    DataConfig(threshold=0.0, binarize="static", val_size=0, train_subset=1, test_subset=1)
    DataConfig(data_seed=2**32 - 1, data_dir=Path("."))
    DataConfig(threshold=0, data_dir=None)  # a recipe's threshold = 0 is an int


# Issue 21, finding 1: a checkpoint kept its data folder only as typed (../shared/mnist), so its test
# digits were not found from another working directory, after a download attempt.
@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project folder whose experiment ``rel`` was trained from it with ``--data-dir mnist``."""
    root = tmp_path_factory.mktemp("project")
    make_mnist_folder(root / "mnist")
    before = os.getcwd()
    os.chdir(root)
    try:
        assert train.main(tiny_train_args(Path("experiments"), Path("mnist"), "rel", "--epochs", "1")) == 0
    finally:
        os.chdir(before)
    return root


@pytest.fixture
def no_download(monkeypatch):
    """Fail the test on any download attempt (conftest leaves no $RNN_MNIST_DATA to fall back on)."""

    def refuse(root):
        raise AssertionError(f"a download to {root} was attempted")

    monkeypatch.setattr(mnist_files, "_download", refuse)


def test_training_records_the_absolute_data_folder_beside_the_typed_one(project):
    saved = load_checkpoint(project / "experiments" / "rel" / "checkpoint.ckpt")["data_config"]
    assert saved["data_dir"] == "mnist" and saved["data_folder"] == str(project / "mnist")


def test_loading_the_training_digits_records_the_folder_read(mnist_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("RNN_MNIST_DATA", str(mnist_dir))
    config = DataConfig(val_size=16)  # no --data-dir: the environment's folder
    load_binarized_mnist(config)
    assert config.data_folder == str(mnist_dir)
    monkeypatch.chdir(mnist_dir.parent)
    typed = DataConfig(data_dir=mnist_dir.name, val_size=16)
    load_binarized_mnist(typed)
    assert typed.data_dir == mnist_dir.name and typed.data_folder == str(mnist_dir)


def test_evaluate_finds_a_checkpoints_digits_from_another_working_directory(
    project, tmp_path, monkeypatch, capsys, no_download
):
    monkeypatch.chdir(tmp_path)
    argv = ["--exp-dir", str(project / "experiments"), "--exp-name", "rel", "--num-digits", "2", "--no-gifs"]
    code, err = run_main(evaluate.main, [*argv, "--device", "cpu"], capsys)
    assert code == 0, err
    assert (tmp_path / "plots" / "rel" / "metrics.json").is_file()


def test_an_older_checkpoint_finds_its_typed_folder_from_where_it_was_trained(project, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    saved = load_checkpoint(project / "experiments" / "rel" / "checkpoint.ckpt")["data_config"]
    del saved["data_folder"]  # saved before the absolute folder was recorded
    found = checkpoint_data_folder(saved, experiment=project / "experiments" / "rel")
    assert found == str(project / "mnist")
    monkeypatch.chdir(project)  # and from where it was trained, as it always was
    assert checkpoint_data_folder(saved) == str(project / "mnist")


def test_an_explicit_folder_then_the_environment_come_before_the_recorded_one(mnist_dir, monkeypatch):
    saved = {"data_dir": "typed", "data_folder": str(mnist_dir)}
    assert checkpoint_data_folder(saved) == str(mnist_dir)
    assert checkpoint_data_folder(saved, data_dir="given") == "given"  # as typed: downloaded there if missing
    monkeypatch.setenv("RNN_MNIST_DATA", "from-env")
    assert checkpoint_data_folder(saved) == "from-env"
    assert checkpoint_data_folder(saved, data_dir="given") == "given"
    monkeypatch.delenv("RNN_MNIST_DATA")
    assert checkpoint_data_folder({"data_dir": None}) is None  # nothing recorded: the default, ./data


def test_a_recorded_folder_that_is_gone_is_one_line_and_nothing_is_downloaded(
    project, tmp_path, monkeypatch, capsys, no_download
):
    moved = tmp_path / "moved"
    shutil.copytree(project / "experiments", moved / "experiments")
    path = moved / "experiments" / "rel" / "checkpoint.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["data_config"].update(data_dir="gone", data_folder=str(tmp_path / "gone"))
    torch.save(checkpoint, path)
    monkeypatch.chdir(tmp_path)
    argv = ["--exp-dir", str(moved / "experiments"), "--exp-name", "rel", "--no-gifs", "--device", "cpu"]
    code, err = run_main(evaluate.main, argv, capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "not in the folder this model was trained on" in err and str(tmp_path / "gone") in err
    assert "--data-dir" in err and "RNN_MNIST_DATA" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["moved"]  # no folder made for a download
