"""evaluate.py end to end on the fixtures: outputs, their contracts, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import REPO, TEST_DIGITS, tiny_train_args
from conftest import run_main as run_script_main

import evaluate
import train
from rnn_mnist import visualise
from rnn_mnist.errors import RnnMnistError
from rnn_mnist.evaluation import choose_indices, completion_metrics


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, mnist_dir):
    """A tiny trained experiment; returns the common evaluate.py arguments for it."""
    root = tmp_path_factory.mktemp("eval")
    exp_dir = root / "experiments"
    args = tiny_train_args(exp_dir, mnist_dir, "tiny", "--epochs", "1")
    assert train.main(args) == 0
    return root, ["--exp-name", "tiny", "--exp-dir", str(exp_dir), "--data-dir", str(mnist_dir)]


def run_main(argv, capsys) -> tuple[int, str]:
    return run_script_main(evaluate.main, argv, capsys)


def test_cli_end_to_end_outputs(experiment):
    root, args = experiment
    out = root / "out-e2e"
    result = subprocess.run(
        [
            sys.executable,
            "evaluate.py",
            *args,
            "--out-dir",
            str(out),
            "--indices",
            "5,0",
            "--sampling",
            "bernoulli",
            "--samples",
            "2",
            "--seed",
            "3",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "masked pixel accuracy" in result.stdout

    with np.load(out / "completions.npz") as npz:
        arrays = dict(npz)
    assert set(arrays) == {"completed", "targets", "labels", "indices", "mask_pixels"}
    assert arrays["completed"].shape == (2, 2, 28, 28) and arrays["completed"].dtype == np.uint8
    assert set(np.unique(arrays["completed"])) <= {0, 1}
    assert arrays["targets"].shape == (2, 28, 28) and arrays["targets"].dtype == np.uint8
    assert arrays["indices"].tolist() == [5, 0] and arrays["mask_pixels"].shape == ()
    assert int(arrays["mask_pixels"]) == 284
    # The visible prefix is the target's; only the last 284 pixels were generated.
    flat_completed, flat_targets = arrays["completed"].reshape(2, 2, 784), arrays["targets"].reshape(2, 784)
    assert (flat_completed[:, :, :500] == flat_targets[:, None, :500]).all()

    gifs = sorted(p.name for p in out.glob("*.gif"))
    labels = arrays["labels"].tolist()
    assert gifs == sorted(f"{labels[i]}-{idx}-{s}.gif" for i, idx in enumerate([5, 0]) for s in range(2))
    assert iio.imread(out / "completions.png").ndim == 3

    metrics = json.loads((out / "metrics.json").read_text())
    hidden = flat_completed[:, :, 500:] == flat_targets[:, None, 500:]
    assert metrics["masked_pixel_accuracy"] == pytest.approx(hidden.mean(), abs=1e-6)
    for key in ("masked_nll_nats", "per_class", "rollout_seconds", "digits_per_second", "device"):
        assert key in metrics
    assert metrics["device"] == "cpu"
    for key in ("class_agreement", "class_agreement_prefix_only", "class_agreement_ground_truth"):
        assert 0 <= metrics[key] <= 1
    assert 0 <= metrics["judge_test_accuracy"] <= 1
    assert set(metrics["per_class"][str(labels[0])]) >= {"masked_pixel_accuracy", "class_agreement"}


def test_same_seed_same_bernoulli_completions(experiment, capsys):
    root, args = experiment
    for name in ("a", "b"):
        argv = [
            *args,
            "--out-dir",
            str(root / name),
            "--sampling",
            "bernoulli",
            "--num-digits",
            "4",
            "--no-gifs",
        ]
        assert evaluate.main(argv) == 0
    with np.load(root / "a" / "completions.npz") as a, np.load(root / "b" / "completions.npz") as b:
        assert np.array_equal(a["completed"], b["completed"]) and np.array_equal(a["indices"], b["indices"])
    assert not list((root / "a").glob("*.gif"))


def test_generation_from_blank_canvas_for_one_class(experiment, capsys):
    root, args = experiment
    out = root / "blank"
    # fmt: off
    argv = [*args, "--out-dir", str(out), "--mask-pixels", "784", "--digit", "3", "--num-digits", "2",
            "--no-gifs"]
    # fmt: on
    assert evaluate.main(argv) == 0
    with np.load(out / "completions.npz") as npz:
        assert npz["labels"].tolist() == [3, 3] and npz["completed"].shape == (2, 1, 28, 28)
    metrics = json.loads((out / "metrics.json").read_text())
    assert sum(metrics["generated_class_histogram"]) == 2 and 0 < metrics["mean_judge_confidence"] <= 1


def test_gif_frames_size_and_last_frame():
    rng = np.random.default_rng(0)
    target, completed = rng.integers(0, 2, 784), rng.integers(0, 2, 784)
    completed[:500] = target[:500]
    frames = visualise.triptych_frames(completed, target, label=8, mask_pixels=284)
    assert 10 < len(frames) <= 100
    width = frames[0].shape[1]
    panel = 28 * visualise.SCALE
    assert visualise.SCALE >= 4 and width == 3 * panel + 4 * visualise.GAP
    # The last frame's middle panel is the whole completion, coloured by origin.
    top, left = visualise.TITLE_HEIGHT, 2 * visualise.GAP + panel
    middle = frames[-1][top : top + panel, left : left + panel]
    expected = visualise.upscale(visualise.colour_pixels(completed, 284))
    assert np.array_equal(middle, expected)
    # The first frame has generated nothing yet.
    assert not np.array_equal(frames[0][top : top + panel, left : left + panel], expected)


def test_gif_file_decodes_loops_and_is_small(tmp_path):
    frames = visualise.triptych_frames(np.ones(784, int), np.ones(784, int), label=1, mask_pixels=284)
    path = tmp_path / "1-0.gif"
    visualise.save_gif(path, frames)
    decoded = iio.imread(path, index=None)
    assert decoded.shape[0] == len(frames) and decoded.shape[1:3] == frames[0].shape[:2]
    assert iio.immeta(path)["loop"] == 0
    assert path.stat().st_size < 200_000


def test_completion_metrics_by_hand():
    targets = torch.zeros(2, 784, dtype=torch.uint8)
    completed = torch.zeros(2, 1, 784, dtype=torch.uint8)
    completed[0, 0, 780:] = 1  # digit 0: 4 of its 4 hidden pixels wrong
    completed[1, 0, 782] = 1  # digit 1: 1 of 4 wrong
    metrics = completion_metrics(
        completed, targets, torch.tensor([7, 2]), torch.tensor([1.0, 3.0]), mask_pixels=4
    )
    assert metrics["masked_pixel_accuracy"] == pytest.approx((0 / 4 + 3 / 4) / 2)
    assert metrics["masked_nll_nats"] == pytest.approx(2.0)
    assert metrics["per_class"]["7"]["masked_pixel_accuracy"] == 0.0
    assert metrics["per_class"]["2"] == {"count": 1, "masked_pixel_accuracy": 0.75, "masked_nll_nats": 3.0}


def test_choose_indices():
    labels = torch.tensor([1, 2, 1, 3, 1, 2])
    assert choose_indices(labels, (4, 0), 16, None, 0).tolist() == [4, 0]
    ones = choose_indices(labels, None, 2, 1, seed=0)
    assert len(ones) == 2 and (labels[ones] == 1).all()
    assert torch.equal(ones, choose_indices(labels, None, 2, 1, seed=0))
    with pytest.raises(RnnMnistError, match="outside"):
        choose_indices(labels, (6,), 1, None, 0)
    with pytest.raises(RnnMnistError, match="only"):
        choose_indices(labels, None, 4, 1, 0)


@pytest.mark.parametrize(
    "bad, message",
    [
        (["--mask-pixels", "0"], "mask-pixels"),
        (["--mask-pixels", "785"], "mask-pixels"),
        (["--indices", str(TEST_DIGITS)], "outside the test set"),
        (["--indices", "-1"], "indices"),
        (["--digit", "10"], "digit"),
        (["--num-digits", "0"], "num-digits"),
        (["--temperature", "0"], "temperature"),
        (["--best-by", "label-posterior"], "--best-of"),
        (["--sampling", "bernoulli", "--best-of", "2", "--best-by", "label-posterior"], "label-conditioned"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "",
)
def test_bad_values_give_a_short_error(experiment, capsys, bad, message):
    root, args = experiment
    code, err = run_main([*args, "--out-dir", str(root / "bad"), *bad], capsys)
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2


def test_unknown_experiment(experiment, capsys):
    _, args = experiment
    code, err = run_main([*args, "--exp-name", "nope"], capsys)
    assert code == 2 and "no experiment 'nope'" in err


def test_corrupt_checkpoint(experiment, tmp_path, capsys):
    _, args = experiment
    broken = tmp_path / "experiments" / "broken"
    broken.mkdir(parents=True)
    (broken / "checkpoint.ckpt").write_bytes(b"garbage")
    code, err = run_main([*args, "--exp-dir", str(tmp_path / "experiments"), "--exp-name", "broken"], capsys)
    assert code == 2 and "not a readable rnn-mnist checkpoint" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda(experiment, capsys):
    _, args = experiment
    code, err = run_main([*args, "--device", "cuda"], capsys)
    assert code == 2 and "no CUDA" in err
