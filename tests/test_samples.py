"""Pictures while training: samples/epoch-NNN.png and latest.png after every epoch."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import torch
from conftest import tiny_train_args

import train
from rnn_mnist import samples, visualise
from rnn_mnist.checkpoint import load_checkpoint
from rnn_mnist.data import DataConfig, load_binarized_mnist
from rnn_mnist.models import ModelConfig, NextPixelModel
from rnn_mnist.rollout import complete

ROW_HEIGHT = 28 * 3 + 4  # one row of visualise.completion_grid at scale 3


def trained(folder):
    """The model and test digits of a finished experiment, rebuilt from its checkpoint."""
    checkpoint = load_checkpoint(folder / "checkpoint.ckpt")
    model = NextPixelModel(ModelConfig.from_dict(checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model_state"])
    data = load_binarized_mnist(DataConfig(**checkpoint["data_config"]))
    return model, data


def test_every_epoch_leaves_a_picture_of_the_model_then(tmp_path, mnist_dir, capsys):
    exp_dir = tmp_path / "experiments"
    assert train.main(tiny_train_args(exp_dir, mnist_dir, "pics")) == 0  # 2 epochs
    folder = exp_dir / "pics" / "samples"
    assert sorted(p.name for p in folder.iterdir()) == ["epoch-001.png", "epoch-002.png", "latest.png"]
    assert (folder / "latest.png").read_bytes() == (folder / "epoch-002.png").read_bytes()
    log = (exp_dir / "pics" / "train.log").read_text().splitlines()
    assert log[1].startswith("| epoch   1 |") and log[1].endswith(f"samples {folder / 'epoch-001.png'}")
    assert log[2].endswith(f"samples {folder / 'epoch-002.png'}")

    model, data = trained(exp_dir / "pics")
    picture = iio.imread(folder / "epoch-002.png")
    assert np.array_equal(picture, samples.epoch_samples(model, data.test, data.test_labels))
    # One row: a test digit of each class, the first of its class, its last 284 pixels greedy.
    chosen = samples.one_per_class(data.test_labels)
    assert data.test_labels[chosen].tolist() == list(range(10))
    assert all((data.test_labels[: i.item()] != c).all() for c, i in enumerate(chosen))
    completed = complete(model, data.test[chosen], 284, "greedy").completed
    assert np.array_equal(picture, visualise.completion_grid(completed.numpy(), 284, columns=10))
    assert picture.shape[0] == ROW_HEIGHT

    # --overwrite leaves no picture of the earlier run behind.
    assert train.main(tiny_train_args(exp_dir, mnist_dir, "pics", "--epochs", "1", "--overwrite")) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["epoch-001.png", "latest.png"]


def test_a_label_conditioned_model_also_draws_each_class_from_blank(tmp_path, mnist_dir, capsys):
    exp_dir = tmp_path / "experiments"
    args = tiny_train_args(exp_dir, mnist_dir, "label", "--epochs", "1", "--condition", "label")
    assert train.main(args) == 0
    picture = iio.imread(exp_dir / "label" / "samples" / "latest.png")
    assert picture.shape[0] == 2 * ROW_HEIGHT
    model, data = trained(exp_dir / "label")
    torch.manual_seed(1)  # the drawn row uses its own generator, not the global one
    again = samples.epoch_samples(model, data.test, data.test_labels)
    assert np.array_equal(picture, again)
    drawn = picture[ROW_HEIGHT:]
    assert not (drawn == visualise.GIVEN_ON).all(axis=-1).any()  # nothing given: all drawn
    generator = torch.Generator().manual_seed(samples.DRAW_SEED)
    blank = torch.zeros(10, 784, dtype=torch.uint8)
    by_hand = complete(model, blank, 784, "bernoulli", generator=generator, labels=torch.arange(10))
    assert np.array_equal(drawn, visualise.completion_grid(by_hand.completed.numpy(), 784, columns=10))
