"""Runs that cannot fit in memory are refused before they allocate, in one line that says how much
they need (issue 11, finding 13). No test allocates more than a tiny run: the refusals are tested
with the free memory made small, and the issue's big runs through the estimates alone."""

from __future__ import annotations

import pytest
import torch
from conftest import run_main, tiny_train_args
from helpers import classify_args as _args

import evaluate
import train
from rnn_mnist import evaluation, memory, tasks
from rnn_mnist.errors import RnnMnistError
from rnn_mnist.memory import (
    MemoryNeed,
    check_fits,
    evaluation_need,
    parameter_count,
    training_need,
)
from rnn_mnist.models import (
    ModelConfig,
    NextPixelModel,
    count_parameters,
)

CPU = torch.device("cpu")


GIB = 2**30


FAST = ModelConfig(context=True, context_rows=3, context_width=7, position=True)  # --preset fast


def train_bytes(config: ModelConfig, batch_size: int) -> int:
    need = training_need(config, batch_size, 55_000, 10_000, CPU, tasks.EVAL_BATCH_SIZE)
    return need.by_device()["cpu"]


def evaluate_bytes(digits: int, draws: int, kept: int, mask: int = 284, label_posterior=False) -> int:
    need = evaluation_need(ModelConfig(), digits, draws, kept, 1000, mask, CPU, True, True, label_posterior)
    return need.by_device()["cpu"]


@pytest.fixture
def free_memory(monkeypatch):
    """Set how much memory the checks see as free."""

    def set_free(n: int) -> None:
        monkeypatch.setattr(memory, "available_bytes", lambda device: n)

    return set_free


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, mnist_dir):
    root = tmp_path_factory.mktemp("memory")
    exp_dir = root / "experiments"
    assert train.main(tiny_train_args(exp_dir, mnist_dir, "tiny", "--epochs", "1")) == 0
    # fmt: off
    return root, ["--exp-name", "tiny", "--exp-dir", str(exp_dir), "--data-dir", str(mnist_dir),
                  "--out-dir", str(root / "out"), "--no-judge", "--no-gifs"]
    # fmt: on


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


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(),
        ModelConfig(cell="lstm", hidden_size=16, num_layers=2),
        ModelConfig(cell="rnn", hidden_size=9, num_layers=3, num_classes=10, head_hidden=7),
        FAST,
    ],
    ids=["gru", "lstm", "rnn", "fast"],
)
def test_parameter_count_without_building_the_model(config):
    assert parameter_count(config) == count_parameters(NextPixelModel(config))


def test_the_issues_runs_need_far_more_than_a_machine_has():
    # Each of these tried to allocate about 20 GB or more, and could wake the OOM killer.
    assert train_bytes(ModelConfig(hidden_size=40_000), 128) > 50 * GIB
    assert train_bytes(ModelConfig(), 100_000) > 50 * GIB  # the batch is all 55,000 digits
    assert evaluate_bytes(16, 10_000_000, 10_000_000) > 50 * GIB  # evaluate --samples 10000000
    assert evaluate_bytes(10_000, 1000, 1000) > 50 * GIB  # --num-digits 10000 --samples 1000


def test_the_readmes_runs_need_little():
    # The estimate must not refuse what the README runs on a 2-core laptop.
    assert train_bytes(ModelConfig(), 128) < 2 * GIB
    assert train_bytes(FAST, 128) < 2 * GIB
    assert evaluate_bytes(16, 1, 1) < 1 * GIB
    assert evaluate_bytes(10_000, 1, 1) < 4 * GIB  # --num-digits 10000 --no-gifs
    assert evaluate_bytes(1000, 8, 1, mask=784, label_posterior=True) < 4 * GIB  # --per-class 100 --best-of 8


def test_check_fits_names_the_batch_size_that_fits(free_memory):
    free_memory(1000)

    def need_at(batch_size):
        return MemoryNeed(CPU, {"activations": 100 * batch_size})

    check_fits(need_at, 10, "ten", "lower --hidden")  # 1000 bytes: fits exactly
    with pytest.raises(RnnMnistError, match=r"needs about .* is free: lower --batch-size to 10 or less"):
        check_fits(need_at, 50, "fifty", "lower --hidden")
    with pytest.raises(RnnMnistError, match="lower --hidden"):
        check_fits(lambda b: MemoryNeed(CPU, {"parameters": 2000 + b}), 50, "big model", "lower --hidden")


def test_training_that_cannot_fit_is_refused_before_it_starts(tmp_path, mnist_dir, capsys, free_memory):
    free_memory(memory.RUNTIME_BYTES + 8 * 2**20)  # the tiny run needs about 13 MiB more at batch 32
    code, err = run_main(train.main, tiny_train_args(tmp_path, mnist_dir, "squeezed"), capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "needs about" in err and "264.0 MiB is free" in err and "lower --batch-size to" in err
    assert not (tmp_path / "squeezed" / "checkpoint.ckpt").exists()


def test_a_model_too_large_is_refused_without_allocating_it(tmp_path, mnist_dir, capsys, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the model was built: it would have allocated about 77 GB")

    monkeypatch.setattr(tasks, "NextPixelModel", never)  # a safety net if the check failed
    monkeypatch.setattr(memory, "available_bytes", lambda device: 16 * GIB)
    args = tiny_train_args(tmp_path, mnist_dir, "huge", "--hidden", "40000")
    code, err = run_main(train.main, args, capsys)
    assert code == 2 and "GiB of memory" in err and "lower --hidden" in err


def test_evaluation_that_cannot_fit_is_refused_before_the_rollout(experiment, capsys, free_memory):
    _, args = experiment
    free_memory(2**16)  # two digits need about 400 KiB
    code, err = run_main(evaluate.main, [*args, "--num-digits", "2"], capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "completing 2 digits x 1 samples needs about" in err and "64.0 KiB is free" in err


def test_too_many_samples_are_refused_without_a_rollout(experiment, capsys, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the rollout ran: it would have allocated terabytes")

    monkeypatch.setattr(evaluation, "complete", never)  # a safety net if the check failed
    monkeypatch.setattr(memory, "available_bytes", lambda device: 16 * GIB)
    _, args = experiment
    code, err = run_main(evaluate.main, [*args, "--sampling", "bernoulli", "--samples", "10000000"], capsys)
    assert code == 2 and "TiB of memory" in err and "fewer completions" in err
