"""rnn_mnist/sample.py: digits drawn from a blank canvas, as a PNG grid, with what means something
for them. (The per-epoch pictures of a training run are tests/test_samples.py's.)"""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import run_main as run_script_main
from conftest import tiny_train_args, with_flags

import train
from rnn_mnist import sample
from rnn_mnist.evaluation import load_model
from rnn_mnist.likelihood import teacher_forced_nll
from rnn_mnist.options import options_of
from rnn_mnist.rollout import complete

TILE = 28 * 3 + 2  # a digit of visualise.completion_grid, and the gap after it


@pytest.fixture(scope="module")
def experiments(tmp_path_factory, mnist_dir):
    """Two tiny trained experiments, plain and label-conditioned; returns their folder."""
    exp_dir = tmp_path_factory.mktemp("sample") / "experiments"
    assert train.main(tiny_train_args(exp_dir, mnist_dir, "plain", "--epochs", "1")) == 0
    label = tiny_train_args(exp_dir, mnist_dir, "label", "--epochs", "1", "--condition", "label")
    assert train.main(label) == 0
    return exp_dir


def _args(exp_dir, out, name="plain", *extra):
    """The command's flags; a flag of ``extra`` replaces the same one here (--device)."""
    return with_flags(
        ["--exp-name", name, "--exp-dir", str(exp_dir), "--out", str(out), "--device", "cpu"], *extra
    )


def _drawn(exp_dir, out, capsys, name="plain", *extra) -> str:
    code = sample.main(_args(exp_dir, out, name, *extra))
    printed = capsys.readouterr()
    assert code == 0, printed.err
    return printed.out


def test_an_unconditioned_model_draws_a_square_grid(experiments, tmp_path, capsys):
    out = tmp_path / "plain.png"
    printed = _drawn(experiments, out, capsys, "plain", "--num", "9")
    assert iio.imread(out).shape == (3 * TILE + 2, 3 * TILE + 2, 3)
    assert "9 digits drawn from a blank canvas" in printed and f"wrote {out}" in printed
    assert "judge" in printed and "reads them as 0:" in printed  # which classes were drawn
    for meaningless in ("pixel accuracy", "class agreement", "asked for"):
        assert meaningless not in printed


def test_a_label_conditioned_model_draws_a_row_per_class(experiments, tmp_path, capsys):
    out = tmp_path / "label.png"
    printed = _drawn(experiments, out, capsys, "label", "--num", "2")
    assert iio.imread(out).shape == (10 * TILE + 2, 2 * TILE + 2, 3)
    assert "20 digits drawn from a blank canvas, 2 of every class, a row each" in printed
    assert "judged as the class asked for: " in printed and " 9:" in printed
    printed = _drawn(experiments, out, capsys, "label", "--digit", "3", "--num", "4")
    assert iio.imread(out).shape == (2 * TILE + 2, 2 * TILE + 2, 3)
    assert "all of class 3" in printed and "judged as the class asked for: " in printed


def test_the_same_seed_draws_the_same_digits(experiments, tmp_path, capsys):
    pictures = {}
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        _drawn(experiments, tmp_path / f"{name}.png", capsys, "plain", "--num", "4", "--seed", seed)
        pictures[name] = (tmp_path / f"{name}.png").read_bytes()
    assert pictures["a"] == pictures["b"] and pictures["a"] != pictures["c"]


def test_the_draws_are_the_rollouts_and_their_nll_the_teacher_forced_one(experiments):
    model, _ = load_model(experiments / "label" / "checkpoint.ckpt", torch.device("cpu"))
    labels = torch.tensor([0, 3, 3, 9, 5])
    drawn, nll = sample.draw(model, 5, labels, seed=4, batch_size=2, show_progress=False)
    assert drawn.shape == (5, 784) and drawn.dtype == torch.uint8 and set(drawn.unique().tolist()) <= {0, 1}
    assert torch.allclose(nll, teacher_forced_nll(model, drawn, labels).double(), rtol=1e-4)
    # The one rollout routine, from a blank canvas, with the same generator in the same batches.
    generator = torch.Generator().manual_seed(4)
    blank = torch.zeros(2, 784, dtype=torch.uint8)
    first = complete(model, blank, 784, "bernoulli", generator=generator, labels=labels[:2]).completed[:, 0]
    assert torch.equal(first, drawn[:2])


def test_drawing_on_each_device(experiments, tmp_path, capsys, test_device):
    out = tmp_path / f"{test_device}.png"
    printed = _drawn(experiments, out, capsys, "label", "--num", "1", "--device", test_device)
    assert iio.imread(out).shape == (10 * TILE + 2, TILE + 2, 3) and f"s on {test_device}" in printed
    model, _ = load_model(experiments / "label" / "checkpoint.ckpt", torch.device(test_device))
    labels = torch.arange(10)
    drawn, nll = sample.draw(model, 10, labels, seed=1, show_progress=False)
    assert torch.allclose(nll, teacher_forced_nll(model, drawn, labels).double(), rtol=1e-3)


def test_digit_on_an_unconditioned_model_is_refused_in_one_line(experiments, tmp_path, capsys):
    out = tmp_path / "refused.png"
    code, err = run_script_main(sample.main, _args(experiments, out, "plain", "--digit", "3"), capsys)
    assert code != 0 and err.startswith("error: --digit chooses the class a label-conditioned model draws")
    assert len(err.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--digit", "10"], "must be an integer in 0..9"),
        (["--temperature", "0"], "--temperature"),
        (["--judge", "j.pt", "--no-judge"], "--no-judge skips the judge that --judge names"),
    ],
)
def test_bad_requests_are_one_line(experiments, tmp_path, capsys, extra, message):
    code, err = run_script_main(sample.main, _args(experiments, tmp_path / "x.png", "label", *extra), capsys)
    assert code != 0 and message in err and len(err.strip().splitlines()) == 1, err


def test_out_must_be_a_png(experiments, tmp_path, capsys):
    code, err = run_script_main(sample.main, _args(experiments, tmp_path / "x.jpg"), capsys)
    assert code != 0 and "expected a .png file" in err


def test_every_flag_is_a_declared_option_and_help_names_the_command():
    declared = {flag for o in options_of(sample.SampleOptions) for flag in o.flags}
    parser = sample.build_parser()
    assert {s for a in parser._actions for s in a.option_strings} - {"-h", "--help"} == declared
    assert parser.format_usage().startswith("usage: python -m rnn_mnist.sample ")


def test_the_grid_shows_every_pixel_as_drawn(experiments, tmp_path, capsys):
    out = tmp_path / "one.png"
    _drawn(experiments, out, capsys, "plain", "--num", "1", "--no-judge")
    picture = iio.imread(out)
    # Every pixel was generated: none shows as given (white) or still hidden (slate blue).
    colours = {tuple(c) for c in np.unique(picture.reshape(-1, 3), axis=0)}
    assert (255, 255, 255) not in colours and (45, 55, 85) not in colours
