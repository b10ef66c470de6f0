"""Sequential-MNIST classification: the model reads every pixel and nothing else, --permute is one
fixed order everywhere, training end to end on the IDX fixtures, resume, refused flags."""

from __future__ import annotations

import pytest
import torch
from conftest import PoisonedGradient, run_main, tiny_train_args

import train
from rnn_mnist import memory, tasks
from rnn_mnist import progress as progress_module
from rnn_mnist.checkpoint import load_checkpoint
from rnn_mnist.models import ClassifierConfig, SequenceClassifier, pixel_permutation

TIMINGS = {"seconds", "train_seconds", "train_sequences_per_second"}


def _model(readout: str = "last", cell: str = "gru", permutation_seed: int | None = None, layers: int = 1):
    torch.manual_seed(0)
    config = ClassifierConfig(
        cell=cell, hidden_size=8, num_layers=layers, readout=readout, permutation_seed=permutation_seed
    )
    return SequenceClassifier(config).eval()


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 784, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
@pytest.mark.parametrize("permutation_seed", [None, 3])
def test_changing_the_pixel_read_last_changes_the_logits(cell, permutation_seed):
    model = _model(cell=cell, permutation_seed=permutation_seed)
    images = _images(2)
    last = int(model.reading_order[-1])  # 783 in raster order
    changed = images.clone()
    changed[:, last] = 1 - changed[:, last]
    with torch.no_grad():
        assert not torch.allclose(model(images), model(changed))


def test_the_logits_depend_on_every_pixel():
    # With the mean readout every state reaches the head, so no gradient can vanish on the way:
    # each of the 784 pixels must move the logits.
    model = _model(readout="mean", permutation_seed=1)
    images = _images(1).requires_grad_()
    model(images).sum().backward()
    assert (images.grad != 0).all()


def test_the_logits_depend_on_nothing_but_the_image():
    # Alone or among other digits, first or last in the batch, now or later: the same logits.
    model = _model(layers=2)
    images = _images(5)
    with torch.no_grad():
        together = model(images)
        alone = torch.cat([model(images[i : i + 1]) for i in range(5)])
        reversed_batch = model(images.flip(0)).flip(0)
        again = model(images)
    torch.testing.assert_close(alone, together, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(reversed_batch, together, rtol=1e-5, atol=1e-6)
    assert torch.equal(again, together)


@pytest.mark.parametrize("readout", ["last", "mean"])
def test_fast_gru_path_equals_nn_gru_and_the_last_pixel_curve_is_the_output(readout):
    model = _model(readout=readout, layers=2)
    images = _images(3)
    with torch.no_grad():
        fast = model(images)
        every = model.logits_after_each_pixel(images)
        model.fast_gru = False
        reference = model(images)
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-5)
    assert every.shape == (3, 784, 10)
    torch.testing.assert_close(every[:, -1], fast, rtol=1e-4, atol=1e-5)


def test_permutation_reorders_the_reading():
    images = _images(2)
    plain, permuted = _model(), _model(permutation_seed=5)
    permuted.load_state_dict({**plain.state_dict(), "reading_order": permuted.reading_order})
    order = pixel_permutation(5)
    assert torch.equal(permuted.reading_order, order) and not torch.equal(order, torch.arange(784))
    with torch.no_grad():  # the permuted model on an image = the plain one on the permuted image
        torch.testing.assert_close(permuted(images), plain(images[:, order]))


def _args(tmp_path, mnist_dir, name, *extra):
    return tiny_train_args(tmp_path / "experiments", mnist_dir, name, "--task", "classify", *extra)


def test_classify_trains_and_resumes_exactly_with_one_fixed_permutation(tmp_path, mnist_dir, capsys):
    assert train.main(_args(tmp_path, mnist_dir, "straight", "--permute", "--data-seed", "4")) == 0
    assert "test acc" in capsys.readouterr().out
    assert (
        train.main(_args(tmp_path, mnist_dir, "resumed", "--permute", "--data-seed", "4", "--epochs", "1"))
        == 0
    )
    folder = tmp_path / "experiments" / "resumed"
    first = load_checkpoint(folder / "checkpoint.ckpt")["model_state"]["reading_order"]
    assert train.main(_args(tmp_path, mnist_dir, "resumed", "--resume", "--epochs", "2")) == 0

    straight = load_checkpoint(tmp_path / "experiments" / "straight" / "checkpoint.ckpt")
    resumed = load_checkpoint(folder / "checkpoint.ckpt")
    order = pixel_permutation(4)
    assert torch.equal(first, order) and torch.equal(resumed["model_state"]["reading_order"], order)
    assert resumed["model_config"]["permutation_seed"] == 4
    history = [{k: v for k, v in e.items() if k not in TIMINGS} for e in resumed["history"]]
    assert history == [{k: v for k, v in e.items() if k not in TIMINGS} for e in straight["history"]]
    for entry in history:
        assert {"train_loss", "val_accuracy", "test_accuracy", "test_loss", "val_loss"} <= set(entry)
        assert 0 <= entry["test_accuracy"] <= 1 and "test_nll_nats" not in entry
    for key in resumed["model_state"]:
        assert torch.equal(resumed["model_state"][key], straight["model_state"][key]), key


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--permute",), "--permute is for --task classify only"),
        (("--readout", "mean"), "--readout is for --task classify only"),
        (("--binarized-input",), "--binarized-input is for --task classify only"),
        (("--task", "classify", "--context"), "--context is for --task next-pixel only"),
        (("--task", "classify", "--condition", "label"), "--condition is for --task next-pixel only"),
        (("--task", "classify", "--scheduled-sampling", "linear"), "--scheduled-sampling is for"),
    ],
)
def test_flags_of_the_other_task_are_refused_in_one_line(tmp_path, mnist_dir, capsys, extra, message):
    code, err = run_main(train.main, tiny_train_args(tmp_path, mnist_dir, "bad", *extra), capsys)
    assert code != 0 and err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_resuming_a_next_pixel_experiment_as_a_classifier_is_refused(tmp_path, mnist_dir, capsys):
    assert train.main(tiny_train_args(tmp_path, mnist_dir, "gen", "--epochs", "1")) == 0
    capsys.readouterr()
    args = tiny_train_args(tmp_path, mnist_dir, "gen", "--resume", "--task", "classify")
    code, err = run_main(train.main, args, capsys)
    assert code != 0 and err.startswith("error: ") and "--task classify" in err


# What main added to the one training loop (issue 11) holds for the classify task too.
def test_a_non_finite_gradient_never_reaches_a_classifier(tmp_path, mnist_dir, capsys, monkeypatch):
    real_loss, calls = tasks.ClassifyTask.loss, {"n": 0}

    def loss_with_poisoned_gradient(self, *args):
        value, extras = real_loss(self, *args)
        calls["n"] += 1
        return (PoisonedGradient.apply(value) if calls["n"] == 3 else value), extras

    monkeypatch.setattr(tasks.ClassifyTask, "loss", loss_with_poisoned_gradient)
    code, err = run_main(train.main, _args(tmp_path, mnist_dir, "poison"), capsys)
    assert code == 3 and "gradient" in err and "epoch 1, batch 3" in err and "Traceback" not in err
    checkpoint = load_checkpoint(tmp_path / "experiments" / "poison" / "checkpoint.ckpt")
    assert checkpoint["epoch"] == 0
    assert all(torch.isfinite(t.float()).all() for t in checkpoint["model_state"].values())


def test_a_non_finite_classifier_evaluation_is_not_saved(tmp_path, mnist_dir, capsys, monkeypatch):
    real_accuracy = tasks.ClassifyTask.accuracy

    def nan_test_loss(self, model, inputs, *args):
        result = real_accuracy(self, model, inputs, *args)
        return {**result, "loss": float("nan")} if len(inputs) == 40 else result  # the test split

    monkeypatch.setattr(tasks.ClassifyTask, "accuracy", nan_test_loss)
    code, err = run_main(train.main, _args(tmp_path, mnist_dir, "nan-eval"), capsys)
    assert code == 3 and "test loss" in err and "epoch 1" in err
    assert load_checkpoint(tmp_path / "experiments" / "nan-eval" / "checkpoint.ckpt")["epoch"] == 0


def test_classify_shows_the_validation_and_test_passes(tmp_path, mnist_dir, capsys, monkeypatch):
    monkeypatch.setattr(progress_module, "LOG_INTERVAL", 0.0)
    assert train.main(_args(tmp_path, mnist_dir, "shown", "--epochs", "1")) == 0
    lines = capsys.readouterr().err.splitlines()
    for stage in ("epoch 1/1: 3/3 batch", "epoch 1/1: validation: 1/1 batch", "epoch 1/1: test: 1/1 batch"):
        assert any(line.startswith(stage) for line in lines), lines


def test_a_classifier_too_large_is_refused_without_allocating_it(tmp_path, mnist_dir, capsys, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the classifier was built")

    monkeypatch.setattr(tasks, "SequenceClassifier", never)
    monkeypatch.setattr(memory, "available_bytes", lambda device: 16 * 2**30)
    code, err = run_main(train.main, _args(tmp_path, mnist_dir, "huge", "--hidden", "40000"), capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "GiB of memory" in err and "lower --hidden or --layers" in err and "--head-hidden" not in err
    # A batch that does not fit is told the batch size that would.
    monkeypatch.setattr(memory, "available_bytes", lambda device: memory.RUNTIME_BYTES + 8 * 2**20)
    code, err = run_main(train.main, _args(tmp_path, mnist_dir, "squeezed"), capsys)
    assert code == 2 and "needs about" in err and "lower --batch-size to" in err, err
