"""rnn_mnist/api.py: the installed package from outside the repository, the README's example, and
the API as a thin layer over the scripts' own code (likelihood, rollout, masks, data)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import REPO, tiny_train_args

import rnn_mnist
import train
from rnn_mnist import evaluation
from rnn_mnist.data import DataConfig, load_test_digits
from rnn_mnist.errors import RnnMnistError
from rnn_mnist.likelihood import teacher_forced_nll
from rnn_mnist.masks import parse_mask
from rnn_mnist.rollout import complete

README = REPO / "README.md"
PYTHON_BLOCK = re.compile(r"## Python API\n.*?```python\n(.*?)```", flags=re.S)


def outside_env(**extra: str) -> dict[str, str]:
    """The environment of a process started outside the checkout: no PYTHONPATH to lean on, so
    ``import rnn_mnist`` finds the package only if it is installed."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RNN_MNIST_DATA")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def run_outside(code: str, cwd, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=outside_env(**env), capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip


@pytest.fixture(scope="module")
def experiments(tmp_path_factory, mnist_dir):
    """Two tiny trained experiments: ``gen`` (plain) and ``label`` (label-conditioned)."""
    exp_dir = tmp_path_factory.mktemp("api") / "experiments"
    assert train.main(tiny_train_args(exp_dir, mnist_dir, "gen", "--epochs", "1")) == 0
    label_args = tiny_train_args(exp_dir, mnist_dir, "label", "--epochs", "1", "--condition", "label")
    assert train.main(label_args) == 0
    return exp_dir


def _load(experiments, name: str = "gen") -> rnn_mnist.Model:
    return rnn_mnist.load(experiments / name, device="cpu")


# Issue 21, finding 1: `import rnn_mnist` failed outside the repository (nothing installable).
def test_import_rnn_mnist_works_from_outside_the_repository_and_stays_light(tmp_path):
    code = "import sys, rnn_mnist; print(rnn_mnist.__file__); print('torch' in sys.modules)"
    result = run_outside(code, tmp_path)
    assert result.returncode == 0, f"run `pip install -r requirements.txt` here: {result.stderr[-500:]}"
    where, torch_imported = result.stdout.split()
    assert os.path.realpath(where) == str((REPO / "rnn_mnist" / "__init__.py").resolve()), (
        "`import rnn_mnist` outside the checkout finds another copy: `pip install -r requirements.txt` here"
    )
    assert torch_imported == "False"  # the API's names are imported on first use


def test_the_readme_api_example_runs_from_outside_the_repository(tmp_path, mnist_dir):
    """Issue 21, finding 1: the README's example, as written, from another folder, on the shipped
    model (its digits from $RNN_MNIST_DATA: the tiny fixture here)."""
    example = PYTHON_BLOCK.search(README.read_text(encoding="utf-8"))
    assert example is not None, "the README has no python block under '## Python API'"
    check = (
        "\nimport json\n"
        "print(json.dumps({'digits': list(digits.shape), 'labels': list(labels.shape), "
        "'samples': list(samples.shape), 'filled': list(filled.shape), "
        "'values': sorted(set(samples.unique().tolist()) | set(filled.unique().tolist()))}))\n"
    )
    result = run_outside(example[1] + check, tmp_path, RNN_MNIST_DATA=str(mnist_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    shapes = json.loads(result.stdout.strip().splitlines()[-1])
    assert shapes == {
        "digits": [16, 784], "labels": [16], "samples": [64, 784], "filled": [16, 784], "values": [0, 1],
    }  # fmt: skip


def test_a_shipped_model_loads_by_its_checkout_path_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = rnn_mnist.load("pretrained/fast-label", device="cpu")
    assert model.path == REPO / "pretrained" / "fast-label" / "checkpoint.ckpt"
    assert model.conditioned and not model.net.training
    assert "fast-label" in repr(model) and "label-conditioned" in repr(model)


@pytest.mark.parametrize("name", ["gen", "label"])
def test_log_prob_is_the_teacher_forced_nll_of_the_scripts(experiments, mnist_dir, name):
    model = _load(experiments, name)
    digits, labels = rnn_mnist.test_digits(model, n=8, data_dir=mnist_dir)
    saved = model.data_config
    expected_digits, expected_labels = load_test_digits(
        DataConfig.from_dict({**saved, "data_dir": str(mnist_dir)})
    )
    assert torch.equal(digits, expected_digits[:8]) and torch.equal(labels, expected_labels[:8])
    assert digits.dtype == torch.uint8 and digits.shape == (8, 784)

    given = labels if model.conditioned else None
    log_prob = model.log_prob(digits, labels=given)
    net, _ = evaluation.load_model(experiments / name / "checkpoint.ckpt", torch.device("cpu"))
    assert log_prob.shape == (8,) and torch.equal(log_prob, -teacher_forced_nll(net, digits, given))
    assert (log_prob < 0).all()
    # The same digits as (N, 28, 28), as floats or as a NumPy array: the same numbers.
    assert torch.equal(model.log_prob(digits.view(8, 28, 28).float(), labels=given), log_prob)
    assert torch.equal(model.log_prob(digits.numpy(), labels=given), log_prob)


def test_samples_are_binary_digits_reproducible_by_seed(experiments):
    model = _load(experiments)
    first = model.sample(5, seed=3)
    assert first.shape == (5, 784) and first.dtype == torch.uint8
    assert set(first.unique().tolist()) <= {0, 1}
    assert torch.equal(model.sample(5, seed=3), first)
    assert not torch.equal(model.sample(5, seed=4), first)
    cold = model.sample(5, temperature=0.05, seed=3)  # near-greedy: at most the model's modes
    assert cold.shape == (5, 784)


def test_a_conditioned_model_samples_the_classes_it_is_told(experiments):
    model = _load(experiments, "label")
    one_class, per_digit = model.sample(3, labels=7, seed=1), model.sample(3, labels=[7, 7, 7], seed=1)
    assert torch.equal(one_class, per_digit)
    assert not torch.equal(model.sample(3, labels=[0, 1, 2], seed=1), one_class)


@pytest.mark.parametrize(
    "mask, inpaint, particles",
    [
        ("center:6", "sample", 4),
        ("center:6", "best", 4),
        ("random:0.3", "blind", 1),
        ("suffix:392", "sample", 1),
    ],
)
def test_completions_keep_every_visible_pixel(experiments, mnist_dir, mask, inpaint, particles):
    model = _load(experiments)
    digits, _ = rnn_mnist.test_digits(model, n=6, data_dir=mnist_dir)
    filled = model.complete(digits, mask=mask, inpaint=inpaint, particles=particles, seed=2)
    hidden = parse_mask(mask, seed=2)
    assert filled.shape == (6, 784) and filled.dtype == torch.uint8
    assert torch.equal(filled[:, ~hidden], digits[:, ~hidden])
    assert set(filled[:, hidden].unique().tolist()) <= {0, 1}
    again = model.complete(digits, mask=mask, inpaint=inpaint, particles=particles, seed=2)
    assert torch.equal(again, filled)


def test_complete_is_the_rollout_routine_and_blind_keeps_every_particle(experiments, mnist_dir):
    model = _load(experiments)
    digits, _ = rnn_mnist.test_digits(model, n=4, data_dir=mnist_dir)
    hidden = parse_mask("rows:10-17")
    greedy = model.complete(digits, mask=hidden.view(28, 28), sampling="greedy")
    expected = complete(model.net, digits, sampling="greedy", hidden=hidden).completed[:, 0]
    assert torch.equal(greedy, expected)
    blind = model.complete(digits, mask="rows:10-17", inpaint="blind", particles=3, seed=0)
    assert blind.shape == (4, 3, 784) and torch.equal(
        blind[:, :, ~hidden], digits[:, None, ~hidden].expand(4, 3, -1)
    )


def test_in_painting_runs_on_each_device(experiments, mnist_dir, test_device):
    """The rollout draws its resampling offsets and its pick with the generator on its own device."""
    model = rnn_mnist.load(experiments / "gen", device=test_device)
    digits, _ = rnn_mnist.test_digits(model, n=3, data_dir=mnist_dir)
    filled = model.complete(digits, mask="center:8", inpaint="sample", particles=8, seed=0)
    hidden = parse_mask("center:8")
    assert filled.device.type == "cpu" and torch.equal(filled[:, ~hidden], digits[:, ~hidden])


def test_a_checkpoint_file_loads_as_its_folder_does(experiments):
    by_folder, by_file = _load(experiments), rnn_mnist.load(experiments / "gen" / "checkpoint.ckpt", "cpu")
    assert by_folder.path == by_file.path and by_file.epoch == 1


def _bad_calls(experiments, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    gen, label = _load(experiments), _load(experiments, "label")
    digits = torch.zeros(2, 784, dtype=torch.uint8)
    return {
        "folder without checkpoint": (lambda: rnn_mnist.load(empty), "no checkpoint in"),
        "nothing there": (lambda: rnn_mnist.load(tmp_path / "nowhere"), "no experiment folder or checkpoint"),
        "unknown device": (lambda: rnn_mnist.load(experiments / "gen", device="tpu"), "tpu"),
        "label missing": (lambda: label.log_prob(digits), "pass labels"),
        "label needless": (lambda: gen.sample(2, labels=3), "labels=None"),
        "labels miscounted": (lambda: label.log_prob(digits, labels=[1, 2, 3]), "3 labels for 2 digits"),
        "label out of range": (lambda: label.sample(2, labels=10), "0..9"),
        "wrong shape": (lambda: gen.log_prob(torch.zeros(2, 783)), "(N, 784) or (N, 28, 28)"),
        "one digit": (lambda: gen.log_prob(torch.zeros(784)), "digits[None]"),
        "grey levels": (lambda: gen.log_prob(torch.full((2, 784), 200)), "binarised"),
        "bad mask": (lambda: gen.complete(digits, mask="middle:4"), "expected KIND:ARGS"),
        "empty mask": (
            lambda: gen.complete(digits, mask=torch.zeros(784, dtype=torch.bool)),
            "hides no pixel",
        ),
        "greedy particles": (lambda: gen.complete(digits, particles=4, sampling="greedy"), "bernoulli"),
        "no samples": (lambda: gen.sample(0), "at least 1"),
        "cold temperature": (lambda: gen.sample(2, temperature=0), "above 0"),
        "no test digits": (lambda: rnn_mnist.test_digits(gen, n=0), "at least 1"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "folder without checkpoint", "nothing there", "unknown device", "label missing", "label needless",
        "labels miscounted", "label out of range", "wrong shape", "one digit", "grey levels", "bad mask",
        "empty mask", "greedy particles", "no samples", "cold temperature", "no test digits",
    ],
)  # fmt: skip
def test_bad_input_is_one_line(experiments, tmp_path, case):
    call, says = _bad_calls(experiments, tmp_path)[case]
    with pytest.raises(RnnMnistError) as error:
        call()
    assert says in str(error.value) and "\n" not in str(error.value)


def test_a_classifier_checkpoint_is_refused_in_one_line(tmp_path, mnist_dir):
    exp_dir = tmp_path / "experiments"
    assert train.main(tiny_train_args(exp_dir, mnist_dir, "cls", "--epochs", "1", "--task", "classify")) == 0
    with pytest.raises(RnnMnistError, match="not a next-pixel model"):
        rnn_mnist.load(exp_dir / "cls")


def test_a_moved_experiment_reads_its_digits_from_the_folder_it_was_trained_on(
    experiments, tmp_path, monkeypatch
):
    """Issue 21, finding 1: the digits of a checkpoint resolve the same from any working directory."""
    shutil.copytree(experiments / "gen", tmp_path / "elsewhere" / "gen")
    monkeypatch.chdir(tmp_path)
    model = rnn_mnist.load("elsewhere/gen", device="cpu")
    digits, labels = rnn_mnist.test_digits(model, n=4)
    assert digits.shape == (4, 784) and labels.shape == (4,)


def test_the_best_checkpoint_is_selectable(experiments):
    """Issue 21, item 6: the best validation epoch's checkpoint, by name, beside the last."""
    folder = experiments / "gen"
    best = rnn_mnist.load(folder, device="cpu", checkpoint="best")
    assert best.path == folder / "best.ckpt"
    assert rnn_mnist.load(folder, device="cpu").path == folder / "checkpoint.ckpt"
    with pytest.raises(RnnMnistError, match="within an experiment folder"):
        rnn_mnist.load(folder / "best.ckpt", device="cpu", checkpoint="best")
    with pytest.raises(RnnMnistError, match="checkpoint must be one of"):
        rnn_mnist.load(folder, device="cpu", checkpoint="first")
