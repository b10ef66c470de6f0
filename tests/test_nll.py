"""rnn_mnist/nll.py: a checkpoint's exact test NLL, in nats and bits/dim, with its standard error."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import TEST_DIGITS, tiny_train_args, with_flags
from conftest import run_main as run_script_main

import train
from rnn_mnist import nll
from rnn_mnist.checkpoint import load_checkpoint
from rnn_mnist.data import DataConfig, load_test_digits
from rnn_mnist.evaluation import load_model
from rnn_mnist.likelihood import class_log_likelihoods, teacher_forced_nll
from rnn_mnist.options import options_of


@pytest.fixture(scope="module")
def experiments(tmp_path_factory, mnist_dir):
    """Two tiny trained experiments, plain and label-conditioned; returns their folder."""
    exp_dir = tmp_path_factory.mktemp("nll") / "experiments"
    assert train.main(tiny_train_args(exp_dir, mnist_dir, "plain", "--epochs", "1")) == 0
    label = tiny_train_args(exp_dir, mnist_dir, "label", "--epochs", "1", "--condition", "label")
    assert train.main(label) == 0
    return exp_dir


def _args(exp_dir, mnist_dir, name="plain", *extra):
    """The command's flags; a flag of ``extra`` replaces the same one here (--device)."""
    base = ["--exp-name", name, "--exp-dir", str(exp_dir), "--data-dir", str(mnist_dir), "--device", "cpu"]
    return with_flags(base, *extra)


def _measured(exp_dir, mnist_dir, tmp_path, capsys, name="plain", *extra):
    """The command's JSON figures and what it printed."""
    out = tmp_path / f"{name}-{len(list(tmp_path.iterdir()))}.json"
    code = nll.main([*_args(exp_dir, mnist_dir, name, *extra), "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    return json.loads(out.read_text()), printed.out


def _by_hand(exp_dir, mnist_dir, name="plain", **binarisation):
    """The model and the test digits (binarised as trained, or as ``binarisation`` says) and labels."""
    path = exp_dir / name / "checkpoint.ckpt"
    model, checkpoint = load_model(path, torch.device("cpu"))
    config = DataConfig.from_dict({**checkpoint["data_config"], "data_dir": str(mnist_dir), **binarisation})
    return (model, *load_test_digits(config))


def test_the_figure_is_the_mean_teacher_forced_nll_with_its_standard_error(
    experiments, mnist_dir, tmp_path, capsys
):
    metrics, printed = _measured(experiments, mnist_dir, tmp_path, capsys)
    model, pixels, _ = _by_hand(experiments, mnist_dir)
    each = teacher_forced_nll(model, pixels).double()
    assert metrics["num_digits"] == TEST_DIGITS and metrics["test_digits"] == f"all {TEST_DIGITS}"
    assert metrics["nll_nats"] == pytest.approx(float(each.mean()), rel=1e-9)
    assert metrics["nll_nats_standard_error"] == pytest.approx(float(each.std() / math.sqrt(TEST_DIGITS)))
    assert metrics["nll_nats_standard_error"] > 0
    assert metrics["bits_per_dim"] == pytest.approx(metrics["nll_nats"] / (784 * math.log(2)))
    assert metrics["bits_per_dim_standard_error"] == pytest.approx(
        metrics["nll_nats_standard_error"] / (784 * math.log(2))
    )
    # The test NLL the training reported after its epoch, on the same digits.
    history = load_checkpoint(experiments / "plain" / "checkpoint.ckpt")["history"]
    assert metrics["nll_nats"] == pytest.approx(history[-1]["test_nll_nats"], rel=1e-5)
    assert metrics["binarization"] == metrics["trained_binarization"] == "threshold-0.1"
    assert f"± {metrics['nll_nats_standard_error']:.2f} nats per digit" in printed
    assert f"{metrics['bits_per_dim']:.4f} ± " in printed and "bits/dim" in printed
    assert "binarised threshold-0.1 as in training" in printed
    for meaningless in ("accuracy", "agreement", "masked"):
        assert meaningless not in printed


def test_the_figure_is_the_same_on_every_device(experiments, mnist_dir, tmp_path, capsys, test_device):
    on_cpu, _ = _measured(experiments, mnist_dir, tmp_path, capsys, "label", "--marginal")
    there, printed = _measured(
        experiments, mnist_dir, tmp_path, capsys, "label", "--marginal", "--device", test_device
    )
    assert there["device"].startswith(test_device) and f"s on {there['device']}" in printed
    assert there["nll_nats"] == pytest.approx(on_cpu["nll_nats"], rel=1e-5)
    assert there["nll_nats_standard_error"] == pytest.approx(on_cpu["nll_nats_standard_error"], rel=1e-3)


def test_num_digits_scores_the_first_n(experiments, mnist_dir, tmp_path, capsys):
    metrics, printed = _measured(experiments, mnist_dir, tmp_path, capsys, "plain", "--num-digits", "7")
    model, pixels, _ = _by_hand(experiments, mnist_dir)
    assert metrics["num_digits"] == 7 and f"the first 7 of {TEST_DIGITS} test digits" in printed
    assert metrics["nll_nats"] == pytest.approx(float(teacher_forced_nll(model, pixels[:7]).double().mean()))
    everything, _ = _measured(experiments, mnist_dir, tmp_path, capsys, "plain", "--num-digits", "all")
    assert everything["num_digits"] == TEST_DIGITS


def test_another_binarisation_scores_other_digits(experiments, mnist_dir, tmp_path, capsys):
    trained, _ = _measured(experiments, mnist_dir, tmp_path, capsys)
    static, printed = _measured(experiments, mnist_dir, tmp_path, capsys, "plain", "--binarize", "static")
    model, pixels, _ = _by_hand(experiments, mnist_dir, binarize="static")
    _, thresholded, _ = _by_hand(experiments, mnist_dir)
    assert not torch.equal(pixels, thresholded)  # other digits, or the test would prove nothing
    assert static["nll_nats"] == pytest.approx(float(teacher_forced_nll(model, pixels).double().mean()))
    assert static["nll_nats"] != pytest.approx(trained["nll_nats"])
    assert "static (one Bernoulli draw, data seed 0)" in printed
    assert "the model was trained on threshold-0.1" in printed
    # Dynamic test digits are one fixed draw, the same as static ones; another seed draws others.
    dynamic, printed = _measured(experiments, mnist_dir, tmp_path, capsys, "plain", "--binarize", "dynamic")
    assert dynamic["nll_nats"] == static["nll_nats"] and "the same test digits as static" in printed
    seeded, _ = _measured(
        experiments, mnist_dir, tmp_path, capsys, "plain", "--binarize", "static", "--data-seed", "5"
    )
    assert seeded["nll_nats"] != static["nll_nats"]
    higher, _ = _measured(experiments, mnist_dir, tmp_path, capsys, "plain", "--threshold", "0.5")
    assert higher["binarization"] == "threshold-0.5" and higher["nll_nats"] != trained["nll_nats"]


def test_a_label_conditioned_model_is_scored_given_its_labels_or_marginally(
    experiments, mnist_dir, tmp_path, capsys
):
    model, pixels, labels = _by_hand(experiments, mnist_dir, "label")
    given, printed = _measured(experiments, mnist_dir, tmp_path, capsys, "label")
    assert given["likelihood"] == "-log p(image | label)" and "-log p(image | label)" in printed
    assert given["nll_nats"] == pytest.approx(
        float(teacher_forced_nll(model, pixels, labels).double().mean())
    )
    marginal, printed = _measured(experiments, mnist_dir, tmp_path, capsys, "label", "--marginal")
    by_class = class_log_likelihoods(model, pixels)  # (N, 10)
    expected = (math.log(10) - by_class.logsumexp(dim=1)).mean()
    assert marginal["likelihood"] == "-log p(image)"
    assert marginal["nll_nats"] == pytest.approx(float(expected), rel=1e-9)
    # p(x) = mean_c p(x | c) <= max_c p(x | c): never more likely than given the best class.
    assert marginal["nll_nats"] >= float((-by_class.max(dim=1).values).mean())


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--marginal"], "--marginal averages over the classes a label-conditioned model is told"),
        (["--data-seed", "3"], "--data-seed seeds a Bernoulli draw; test digits binarised by threshold"),
        (["--binarize", "static", "--threshold", "0.3"], "--threshold sets the threshold of --binarize"),
        ([f"--num-digits={TEST_DIGITS + 1}"], f"there are only {TEST_DIGITS} test digits"),
        (["--num-digits", "0"], "expected a number of digits (at least 1) or all, got '0'"),
        (["--num-digits", "some"], "expected a number of digits (at least 1) or all, got 'some'"),
        (["--out", "figures.txt"], "expected a .json file"),
    ],
)
def test_what_means_nothing_is_refused_in_one_line(experiments, mnist_dir, capsys, extra, message):
    code, err = run_script_main(nll.main, _args(experiments, mnist_dir, "plain", *extra), capsys)
    assert code != 0 and message in err, err
    assert len(err.strip().splitlines()) == 1


def test_an_unknown_experiment_is_one_line(experiments, mnist_dir, capsys):
    code, err = run_script_main(nll.main, _args(experiments, mnist_dir, "nothing"), capsys)
    assert code != 0 and "no experiment 'nothing'" in err and len(err.strip().splitlines()) == 1


def test_every_flag_is_a_declared_option_and_help_names_the_command(capsys):
    declared = {flag for o in options_of(nll.NllOptions) for flag in o.flags}
    parser = nll.build_parser()
    assert {s for a in parser._actions for s in a.option_strings} - {"-h", "--help"} == declared
    assert parser.format_usage().startswith("usage: python -m rnn_mnist.nll ")
