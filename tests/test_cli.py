"""rnn_mnist/cli.py: flag ranges, one-line errors, typed flags, refusal of ignored flags."""

from __future__ import annotations

import importlib
import sys

import pytest
from conftest import REPO, tiny_train_args
from conftest import run_main as run_script_main

import evaluate
import train
from rnn_mnist.cli import typed_flags
from rnn_mnist.judge import main as judge_main


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "error" in err
    for needle in needles:
        assert needle in err, err


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, mnist_dir):
    """A tiny trained experiment; returns the common evaluate.py arguments for it."""
    root = tmp_path_factory.mktemp("flags")
    exp_dir = root / "experiments"
    assert train.main(tiny_train_args(exp_dir, mnist_dir, "tiny", "--epochs", "1")) == 0
    return root, ["--exp-name", "tiny", "--exp-dir", str(exp_dir), "--data-dir", str(mnist_dir)]


TRAIN_IGNORED = [
    (["--scheduled-sampling", "linear", "--ss-k", "2"], ["linear", "k <= 1"]),
    (["--scheduled-sampling", "linear", "--ss-k", "1e308"], ["linear", "k <= 1"]),  # eps was inf
    (["--ss-c", "0.1"], ["--ss-c", "without --scheduled-sampling"]),
    (["--scheduled-sampling", "exponential", "--ss-min", "0.3"], ["--ss-min", "linear only"]),
    (["--lr-schedule", "cosine", "--lr-milestones", "1"], ["--lr-milestones", "step only"]),
    (["--context-rows", "2"], ["--context-rows", "without --context"]),
    # Issue 23, finding 9: --task classify reads grey levels unless --binarized-input (identical loss).
    (["--task", "classify", "--binarize", "static"], ["--binarize", "grey levels", "--binarized-input"]),
    (["--task", "classify", "--threshold", "0.5"], ["--threshold", "grey levels", "--binarized-input"]),
    (["--binarize", "dynamic", "--threshold", "0.5"], ["--threshold", "threshold only"]),
    (["--lr", "1e-3", "--lr", "2e-3"], ["--lr", "typed twice", "0.001", "0.002"]),  # kept the last
]


EVALUATE_IGNORED = [
    (["--per-class", "2", "--digit", "3"], ["--per-class", "--digit"]),  # drew all ten classes
    (["--temperature", "2"], ["--temperature", "greedy"]),  # recorded, but changed nothing
    (["--best-of", "3"], ["--best-of", "greedy"]),  # three identical draws
    (["--sampling", "mean", "--best-of", "3"], ["--best-of", "mean"]),
    (["--samples", "2"], ["--samples", "identical"]),
    (["--indices", "1,1,1"], ["--indices", "1 given more than once"]),  # counted three times
    (["--indices", "1,2", "--num-digits", "5"], ["--num-digits"]),
    (["--indices", "1,2", "--per-class", "1"], ["--indices", "--per-class"]),
    (["--sampling", "bernoulli", "--best-by", "likelihood"], ["--best-by", "--best-of"]),
    (["--against", "other"], ["--against", "give --classify too"]),
    # --classify reads whole digits: completion flags would be ignored (even those a later rule refuses)
    (["--classify", "--mask", "center:14", "--particles", "4"], ["--mask", "--particles", "only change"]),
    (["--classify", "--inpaint", "best", "--samples", "2"], ["--inpaint", "--samples", "only change"]),
    (["--classify", "--no-gifs"], ["--no-gifs", "--classify reads whole test digits"]),
    (["--classify", "--gifs", "3"], ["--gifs", "only change"]),
    (["--gifs", "3", "--no-gifs"], ["--gifs", "--no-gifs writes no GIFs"]),  # which one meant?
    # Issue 23, finding 9: each did nothing, without a word.
    (["--inpaint", "sample"], ["--inpaint sample", "blind filling", "--particles K > 1"]),
    (["--inpaint", "best", "--sampling", "bernoulli"], ["--inpaint best", "--particles K > 1"]),
    (["--mask", ""], ["--mask", "mask ''"]),  # was the default suffix:284
    (["--mask", "center:14", "--mask", "rows:5-9"], ["--mask", "typed twice", "center:14", "rows:5-9"]),
    (["--num-digits", "3", "--num-digits", "4"], ["--num-digits", "typed twice"]),
    (["--test-digits", "10"], ["--test-digits", "--num-digits"]),  # 16 digits completed
]


# Finding 10: every seed is bounded to 0..2**32-1 (numpy's range), with a one-line error.
@pytest.mark.parametrize(
    "bad",
    [
        ["--seed", "-1"],  # numpy: "Seed must be between 0 and 2**32 - 1" (a traceback before)
        ["--seed", "4294967296"],
        ["--data-seed", "100000000000000000000000"],  # torch: "Overflow when unpacking long long"
        ["--data-seed", "4294967296"],  # was accepted and aliased another seed
        ["--seed", "1.5"],
    ],
    ids=lambda bad: " ".join(bad),
)
def test_train_seeds_out_of_range_are_one_line_errors(tmp_path, mnist_dir, capsys, bad):
    args = tiny_train_args(tmp_path / "experiments", mnist_dir, "seeded", *bad, "--epochs", "1")
    code, err = run_script_main(train.main, args, capsys)
    assert_one_line_error(code, err, bad[0], "0..4294967295")
    assert not (tmp_path / "experiments" / "seeded").exists()


def test_the_largest_seeds_are_usable(tmp_path, mnist_dir, capsys):
    # fmt: off
    args = tiny_train_args(tmp_path / "experiments", mnist_dir, "max", "--epochs", "1", "--seed",
                           "4294967295", "--data-seed", "4294967295", "--binarize", "static")
    # fmt: on
    assert train.main(args) == 0


@pytest.mark.parametrize("value", ["-1", "4294967296", "100000000000000000000000"])
def test_evaluate_seed_out_of_range_is_a_one_line_error(experiment, capsys, value):
    root, args = experiment
    code, err = run_script_main(evaluate.main, [*args, "--out-dir", str(root / "s"), "--seed", value], capsys)
    assert_one_line_error(code, err, "--seed", "0..4294967295")


def test_judge_seed_out_of_range_is_a_one_line_error(tmp_path, capsys):
    code, err = run_script_main(judge_main, ["--exp-dir", str(tmp_path), "--seed", "-1"], capsys)
    assert code == 2 and "--seed" in err and "Traceback" not in err


# Finding 11: lr and gamma in sane ranges; the non-finite guard covers the whole step.
@pytest.mark.parametrize(
    "bad",
    [
        ["--lr", "1e39"],  # overflowed fp32 inside Adam: a RuntimeError traceback
        ["--lr", "1e30"],  # trained and printed 30-digit losses
        ["--lr", "2"],
        ["--lr-gamma", "1e308", "--lr-milestones", "1"],  # lr * gamma overflowed in epoch 2
        ["--lr-gamma", "2", "--lr-milestones", "1"],
    ],
    ids=lambda bad: " ".join(bad),
)
def test_lr_and_gamma_out_of_range_are_one_line_errors(tmp_path, mnist_dir, capsys, bad):
    code, err = run_script_main(train.main, tiny_train_args(tmp_path, mnist_dir, "lr", *bad), capsys)
    assert_one_line_error(code, err, bad[0], "(0, 1]")


@pytest.mark.parametrize("bad, needles", TRAIN_IGNORED, ids=[" ".join(bad) for bad, _ in TRAIN_IGNORED])
def test_train_refuses_flags_it_would_ignore(tmp_path, mnist_dir, capsys, bad, needles):
    code, err = run_script_main(train.main, tiny_train_args(tmp_path, mnist_dir, "ignored", *bad), capsys)
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "ignored").exists()


@pytest.mark.parametrize("bad, needles", EVALUATE_IGNORED, ids=[" ".join(bad) for bad, _ in EVALUATE_IGNORED])
def test_evaluate_refuses_flags_it_would_ignore(experiment, capsys, bad, needles):
    root, args = experiment
    out = root / "ignored"
    code, err = run_script_main(evaluate.main, [*args, "--out-dir", str(out), "--no-judge", *bad], capsys)
    assert_one_line_error(code, err, *needles)
    assert not out.exists()


def test_typed_flags_are_told_apart_from_defaults():
    parser = train.build_parser()
    typed = typed_flags(parser, ["--exp-name", "x", "--hidden", "128", "--context"])
    assert typed == {"exp_name", "hidden_size", "context"}  # --hidden 128 is the default, but typed


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, mnist_dir):
    """A tiny --task classify experiment; returns the common evaluate.py arguments for it."""
    root = tmp_path_factory.mktemp("classifier")
    exp_dir = root / "experiments"
    assert train.main(tiny_train_args(exp_dir, mnist_dir, "cls", "--task", "classify", "--epochs", "1")) == 0
    return root, ["--exp-name", "cls", "--exp-dir", str(exp_dir), "--data-dir", str(mnist_dir)]


# Issue 23, finding 9: the guard covered --classify only; on a classify experiment these were
# accepted and changed nothing (the accuracy, the mask not even recorded).
@pytest.mark.parametrize(
    "bad",
    [["--mask", "center:14"], ["--seed", "3"], ["--no-gifs"], ["--num-digits", "4"], ["--no-judge"]],
    ids=lambda bad: " ".join(bad),
)
def test_evaluate_refuses_completion_flags_on_a_classify_experiment(classifier, capsys, bad):
    root, args = classifier
    out = root / "refused"
    code, err = run_script_main(evaluate.main, [*args, "--out-dir", str(out), *bad], capsys)
    assert_one_line_error(code, err, bad[0], "only changes completions", "cls (--task classify)")
    assert not out.exists()


def test_a_flag_typed_twice_with_one_value_is_accepted():
    parser = train.build_parser()
    assert parser.parse_args(["--exp-name", "x", "--lr", "0.001", "--lr", "1e-3"]).lr == 1e-3
    assert evaluate.build_parser().parse_args(["--exp-name", "x", "--no-gifs", "--no-gifs"]).gifs is False


def _runnable_modules() -> list[str]:
    """The package's modules run as ``python -m rnn_mnist.<name>``."""
    package = REPO / "rnn_mnist"
    return sorted(
        ".".join(path.relative_to(REPO).with_suffix("").parts)
        for path in package.rglob("*.py")
        if 'if __name__ == "__main__":' in path.read_text(encoding="utf-8")
    )


@pytest.mark.parametrize("module", _runnable_modules())
def test_help_names_the_command_as_typed(module, capsys, monkeypatch):
    imported = importlib.import_module(module)
    monkeypatch.setattr(sys, "argv", [imported.__file__, "--help"])  # what python -m sets
    with pytest.raises(SystemExit) as exit_info:
        imported.main(["--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m {module} ")


def test_the_runnable_modules_are_found():
    assert {"rnn_mnist.compare", "rnn_mnist.judge", "rnn_mnist.pretrained"} <= set(_runnable_modules())
