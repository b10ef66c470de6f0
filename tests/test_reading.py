"""Reading digits: evaluate.py on a classify experiment, the generative model as a classifier
(Bayes posterior, accuracy by pixels read, --against) and their refusals, end to end on the fixtures."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import folder_files, run_main, tiny_train_args

import evaluate
import train
from rnn_mnist import progress
from rnn_mnist.checkpoint import load_checkpoint
from rnn_mnist.config import EvalOptions
from rnn_mnist.likelihood import class_log_posterior
from rnn_mnist.models import ClassifierConfig, ModelConfig, NextPixelModel, SequenceClassifier
from rnn_mnist.reading import classifier_reading, confusion_matrix, generative_reading, read_digits


def _conditioned_model() -> NextPixelModel:
    torch.manual_seed(0)
    model = NextPixelModel(ModelConfig(hidden_size=6, num_classes=10)).eval()
    with torch.no_grad():  # make the label matter: a random model's label weights are small
        model.rnn.weight_ih_l0[:, -10:].mul_(20)
    return model


def _binary_images(n: int) -> torch.Tensor:
    return (torch.rand(n, 784, generator=torch.Generator().manual_seed(1)) > 0.8).to(torch.uint8)


@torch.no_grad()
def test_bayes_posterior_sums_to_one_and_equals_a_pixel_by_pixel_computation():
    model, images = _conditioned_model(), _binary_images(2)
    posterior = class_log_posterior(model, images).exp()  # (2, 10)
    # By hand: p(image | c) as the product over pixels of the model's Bernoulli probabilities, one
    # pixel at a time with model.step, then Bayes' rule with a uniform prior.
    by_hand = torch.zeros(2, 10, dtype=torch.float64)
    for c in range(10):
        labels, state = torch.full((2,), c), None
        for t in range(784):
            logit, state = model.step(images.float(), t, state, labels)
            p = torch.sigmoid(logit.double())
            by_hand[:, c] += torch.where(images[:, t] == 1, p, 1 - p).log()
    by_hand = (by_hand - by_hand.logsumexp(dim=1, keepdim=True)).exp()
    torch.testing.assert_close(posterior.sum(dim=1), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(posterior, by_hand, rtol=1e-3, atol=1e-4)
    assert posterior.max() - posterior.min() > 0.05  # the classes really differ


@torch.no_grad()
def test_accuracy_after_784_pixels_is_the_full_image_accuracy():
    model, images = _conditioned_model(), _binary_images(30)
    labels = torch.arange(30) % 10
    log_posterior, every = generative_reading(model, images, batch_size=7)
    independent = class_log_posterior(model, images, batch_size=11).argmax(dim=1)
    assert torch.equal(every[:, -1], independent)
    assert torch.equal(log_posterior.argmax(dim=1), independent)
    # And earlier, the reading is the posterior of the prefix alone: after 300 pixels it ignores the rest.
    changed = images.clone()
    changed[:, 300:] = 1 - changed[:, 300:]
    _, every_changed = generative_reading(model, changed, batch_size=30)
    assert torch.equal(every_changed[:, :300], every[:, :300])
    assert not torch.equal(every_changed[:, -1], every[:, -1])
    assert (labels == independent).double().mean() == (every[:, -1] == labels).double().mean()


def test_confusion_matrix_rows_are_true_classes():
    matrix = confusion_matrix(torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 0]), classes=3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]


@pytest.fixture(scope="module")
def experiments(tmp_path_factory, mnist_dir):
    """A classify experiment (permuted) and a label-conditioned next-pixel one, trained once."""
    exp_dir = tmp_path_factory.mktemp("experiments")
    common = ("--epochs", "1")
    assert (
        train.main(tiny_train_args(exp_dir, mnist_dir, "cls", "--task", "classify", "--permute", *common))
        == 0
    )
    assert train.main(tiny_train_args(exp_dir, mnist_dir, "gen", "--condition", "label", *common)) == 0
    assert train.main(tiny_train_args(exp_dir, mnist_dir, "plain", *common)) == 0
    return exp_dir


def _evaluate(experiments, tmp_path, name, *extra):
    # The experiment's own (synthetic) data, typed: what a user of a moved experiment would type.
    data_dir = load_checkpoint(experiments / name / "checkpoint.ckpt")["data_config"]["data_dir"]
    folders = ["--exp-dir", str(experiments), "--out-dir", str(tmp_path / name), "--data-dir", data_dir]
    return ["--exp-name", name, *folders, *extra]


def test_evaluate_a_classify_experiment(experiments, tmp_path, capsys):
    assert evaluate.main(_evaluate(experiments, tmp_path, "cls")) == 0
    assert "test accuracy" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "cls" / "metrics.json").read_text())
    checkpoint = load_checkpoint(experiments / "cls" / "checkpoint.ckpt")
    # The same permutation and pixel scaling as in training: the same accuracy on the same 40 digits.
    assert math.isclose(metrics["test_accuracy"], checkpoint["history"][-1]["test_accuracy"])
    assert metrics["permuted"] and metrics["num_digits"] == 40
    matrix = torch.tensor(metrics["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 40
    assert math.isclose(int(matrix.trace()) / 40, metrics["test_accuracy"])
    assert len(metrics["misread"]) == 40 - int(matrix.trace())
    assert len(metrics["accuracy_by_pixels_read"]) == 784
    assert math.isclose(metrics["accuracy_by_pixels_read"][-1], metrics["test_accuracy"])
    for name in ("confusion.png", "misread.png", "accuracy-by-pixels.png"):
        assert (tmp_path / "cls" / name).read_bytes()[:4] == b"\x89PNG"


def test_the_generative_model_as_a_classifier_against_a_classify_model(experiments, tmp_path, capsys):
    args = _evaluate(experiments, tmp_path, "gen", "--classify", "--against", "cls", "--test-digits", "12")
    assert evaluate.main(args) == 0
    out = capsys.readouterr().out
    assert "generative classifier" in out and "against cls" in out
    metrics = json.loads((tmp_path / "gen" / "metrics.json").read_text())
    assert metrics["num_digits"] == 12 and len(metrics["accuracy_by_pixels_read"]) == 784
    assert metrics["accuracy_by_pixels_read"][-1] == metrics["test_accuracy"]
    assert len(metrics["against"]["accuracy_by_pixels_read"]) == 784
    assert (tmp_path / "gen" / "accuracy-by-pixels.png").exists()


@pytest.mark.parametrize(
    ("name", "extra", "message"),
    [
        ("plain", ("--classify",), "trained without --condition label"),
        ("cls", ("--classify",), "is a classifier already"),
        ("gen", ("--against", "cls"), "give --classify too"),
        ("gen", ("--classify", "--against", "plain"), "is not a classify experiment"),
        ("gen", ("--classify", "--against", "missing"), "no experiment 'missing'"),
    ],
)
def test_reading_refuses_bad_input_in_one_line(experiments, tmp_path, capsys, name, extra, message):
    code, err = run_main(evaluate.main, _evaluate(experiments, tmp_path, name, *extra), capsys)
    assert code != 0 and "error: " in err and message in err
    assert len(err.strip().splitlines()) == 1


def test_read_digits_of_a_next_pixel_model_needs_classify(experiments, tmp_path):
    with pytest.raises(Exception, match="pass --classify"):
        read_digits(EvalOptions(exp_name="gen", exp_dir=str(experiments), out_dir=str(tmp_path / "x")))


def test_compare_puts_classify_experiments_in_their_own_accuracy_table(experiments, tmp_path, capsys):
    from rnn_mnist import compare

    folders = [experiments / n for n in ("gen", "cls", "plain")]
    markdown = compare.compare(folders, "mixed", tmp_path, eval_dir=tmp_path)
    nll_table, accuracy_table = markdown.split("\n\n")
    assert "test NLL" in nll_table and "| gen |" in nll_table and "| cls |" not in nll_table
    assert "test acc" in accuracy_table and "NLL" not in accuracy_table
    row = next(line for line in accuracy_table.splitlines() if line.startswith("| cls |"))
    accuracy = load_checkpoint(experiments / "cls" / "checkpoint.ckpt")["history"][-1]["test_accuracy"]
    assert f"{accuracy:.4f}" in row and "permuted" in row
    assert "not in the picture" in capsys.readouterr().err
    only = compare.compare([experiments / "cls"], "cls", tmp_path, eval_dir=tmp_path)
    assert only.startswith("| classifier |") and (tmp_path / "compare-cls.png").exists()


def test_classify_reads_into_its_own_folder_beside_the_completions(
    experiments, tmp_path, capsys, monkeypatch
):
    """Issue 23, finding 5: --classify replaced the completion metrics.json in plots/<exp>/."""
    from rnn_mnist import compare
    from rnn_mnist.output_folder import read_log

    monkeypatch.chdir(tmp_path)  # the default folders, plots/gen and plots/gen-classify, land here
    data_dir = load_checkpoint(experiments / "gen" / "checkpoint.ckpt")["data_config"]["data_dir"]
    common = ["--exp-name", "gen", "--exp-dir", str(experiments), "--data-dir", data_dir]
    assert evaluate.main([*common, "--num-digits", "2", "--no-gifs", "--no-judge"]) == 0
    completions = folder_files(tmp_path / "plots" / "gen")
    assert evaluate.main([*common, "--classify", "--test-digits", "12"]) == 0
    assert "wrote plots/gen-classify/" in capsys.readouterr().out
    assert folder_files(tmp_path / "plots" / "gen") == completions  # the completions kept, untouched
    reading = json.loads((tmp_path / "plots" / "gen-classify" / "metrics.json").read_text())
    assert reading["evaluation"] == "generative classifier" and reading["num_digits"] == 12
    # Its log keeps it, less the per-digit detail metrics.json holds (issue 21, finding 4).
    (logged,) = read_log(tmp_path / "plots" / "gen-classify")
    assert logged["test_accuracy"] == reading["test_accuracy"] and "misread" not in logged
    # compare finds both: the completions' figures and the reading's accuracy, in its own column.
    experiment = compare.load_experiment(experiments / "gen", tmp_path / "plots")
    assert experiment["evaluation"]["num_digits"] == 2
    assert experiment["reading"]["test_accuracy"] == reading["test_accuracy"]
    header, _, row = compare.nll_table([experiment]).splitlines()
    assert header.endswith("| --classify acc |") and row.endswith(f"| {reading['test_accuracy']:.4f} |")


def test_a_default_folder_holding_another_experiments_evaluation_is_refused(
    experiments, tmp_path, capsys, monkeypatch
):
    """plots/gen-classify is also the default folder of an experiment named gen-classify: neither
    evaluation replaces the other's."""
    monkeypatch.chdir(tmp_path)
    other = tmp_path / "plots" / "gen-classify"
    other.mkdir(parents=True)
    (other / "metrics.json").write_text('{"experiment": "gen-classify"}')
    data_dir = load_checkpoint(experiments / "gen" / "checkpoint.ckpt")["data_config"]["data_dir"]
    argv = ["--exp-name", "gen", "--exp-dir", str(experiments), "--data-dir", data_dir, "--classify"]
    code, err = run_main(evaluate.main, argv, capsys)
    assert code == 2 and "holds an evaluation of experiment gen-classify" in err, err
    assert (other / "metrics.json").read_text() == '{"experiment": "gen-classify"}'


def test_completion_flags_with_classify_are_refused_in_grammatical_words(experiments, tmp_path, capsys):
    """One flag reads "only changes", not "only change"."""
    code, err = run_main(
        evaluate.main, _evaluate(experiments, tmp_path, "gen", "--classify", "--no-gifs"), capsys
    )
    assert code == 2 and "--no-gifs only changes completions," in err, err


def test_against_takes_a_folder_as_compare_does(experiments, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(experiments.parent)
    for against in (str(experiments / "cls"), f"{experiments.name}/cls"):  # absolute, then relative
        args = _evaluate(experiments, tmp_path / "out", "gen", "--classify", "--against", against)
        code, err = run_main(evaluate.main, [*args, "--test-digits", "12"], capsys)
        assert code == 0, err
        metrics = json.loads((tmp_path / "out" / "gen" / "metrics.json").read_text())
        assert (
            metrics["against"]["experiment"] == "cls"
            and len(metrics["against"]["accuracy_by_pixels_read"]) == 784
        )
    args = _evaluate(
        experiments, tmp_path / "out", "gen", "--classify", "--against", str(tmp_path / "nothing")
    )
    code, err = run_main(evaluate.main, args, capsys)
    assert code == 2 and "--against" in err and "no experiment there" in err


@pytest.mark.parametrize("reader", ["classifier", "generative"])
def test_reading_progress_in_a_log_is_whole_lines(reader, capsys, monkeypatch):
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.0)  # a line at every step, as a long reading makes
    images = _binary_images(6)
    if reader == "classifier":
        classifier_reading(SequenceClassifier(ClassifierConfig(hidden_size=4)), images.float(), 2, True)
    else:
        generative_reading(_conditioned_model(), images, 2, True)
    err = capsys.readouterr().err  # stderr is not a terminal here, as in a log file
    assert "\r" not in err and "\x1b" not in err
    lines = err.splitlines()
    assert lines and all(line.startswith("reading: ") for line in lines) and "3/3 batch" in lines[-1]
