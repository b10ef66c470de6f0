"""rnn_mnist/evaluation.py through evaluate.py on the fixtures: outputs, contracts, bad input."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import REPO, TEST_DIGITS, folder_files, tiny_train_args, with_flags
from conftest import run_main as run_script_main
from helpers import scripted_validation

import evaluate
import train
from rnn_mnist import evaluation, judge, tasks, visualise
from rnn_mnist.checkpoint import load_checkpoint, weights_sha256
from rnn_mnist.errors import RnnMnistError
from rnn_mnist.evaluation import choose_indices


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, mnist_dir):
    """A tiny trained experiment; returns the common evaluate.py arguments for it."""
    root = tmp_path_factory.mktemp("eval")
    exp_dir = root / "experiments"
    args = tiny_train_args(exp_dir, mnist_dir, "tiny", "--epochs", "1")
    assert train.main(args) == 0
    return root, [
        "--exp-name",
        "tiny",
        "--exp-dir",
        str(exp_dir),
        "--data-dir",
        str(mnist_dir),
        "--device",
        "cpu",
    ]


def run_main(argv, capsys) -> tuple[int, str]:
    return run_script_main(evaluate.main, argv, capsys)


def _bad_judges(folder, other):
    """Broken judge files, each with a word its error must contain."""
    cases = {}
    missing = folder / "missing.pt"
    cases["missing"] = (missing, "no digit judge")
    garbage = folder / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    garbage.with_suffix(".json").write_text(other.with_suffix(".json").read_text())
    cases["corrupt"] = (garbage, "not a readable digit judge")
    truncated = folder / "truncated.pt"
    truncated.write_bytes(other.read_bytes()[:5000])
    truncated.with_suffix(".json").write_text(other.with_suffix(".json").read_text())
    cases["truncated"] = (truncated, "not a readable digit judge")
    lonely = folder / "lonely.pt"
    lonely.write_bytes(other.read_bytes())
    cases["no json"] = (lonely, "lonely.json")
    bad_json = folder / "badjson.pt"
    bad_json.write_bytes(other.read_bytes())
    bad_json.with_suffix(".json").write_text("{not json")
    cases["corrupt json"] = (bad_json, "not readable JSON")
    swapped = folder / "swapped.pt"  # the shipped weights beside another judge's description
    swapped.write_bytes(judge.SHIPPED_JUDGE.read_bytes())
    swapped.with_suffix(".json").write_text(other.with_suffix(".json").read_text())
    cases["hash mismatch"] = (swapped, "not of one judge")
    wrong_shape = folder / "wrong-shape.pt"
    state = {"features.0.weight": torch.zeros(3, 3, dtype=torch.float16)}
    judge.save_judge(wrong_shape, state, {"test_accuracy": {}})
    cases["wrong shapes"] = (wrong_shape, "not a digit judge of this version")
    model_checkpoint = folder / "model.pt"  # a next-pixel checkpoint passed as a judge
    model_checkpoint.write_bytes((folder / "experiments" / "tiny" / "checkpoint.ckpt").read_bytes())
    model_checkpoint.with_suffix(".json").write_text(other.with_suffix(".json").read_text())
    cases["model checkpoint"] = (model_checkpoint, "not a state dict of tensors")
    return cases


def test_cli_end_to_end_outputs(experiment, test_device):
    root, args = experiment
    out = root / f"out-e2e-{test_device}"
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
            "--device",
            test_device,
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
    assert set(arrays) == {"completed", "targets", "labels", "indices", "hidden"}
    assert arrays["completed"].shape == (2, 2, 28, 28) and arrays["completed"].dtype == np.uint8
    assert set(np.unique(arrays["completed"])) <= {0, 1}
    assert arrays["targets"].shape == (2, 28, 28) and arrays["targets"].dtype == np.uint8
    assert arrays["indices"].tolist() == [5, 0] and arrays["hidden"].shape == (28, 28)
    assert np.flatnonzero(arrays["hidden"]).tolist() == list(range(500, 784))
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
    assert metrics["device"] == str(torch.device(test_device))
    for key in ("class_agreement", "class_agreement_prefix_only", "class_agreement_ground_truth"):
        assert 0 <= metrics[key] <= 1
    # The shipped judge, named by its hash, with the accuracy stored beside it (not re-measured).
    shipped = json.loads(judge.SHIPPED_JUDGE.with_suffix(".json").read_text())
    assert metrics["judge"]["sha256"] == shipped["sha256"]
    assert metrics["judge"]["path"] == "rnn_mnist/weights/judge.pt"  # wherever the clone lives
    assert metrics["judge_test_accuracy"] == shipped["test_accuracy"]["threshold-0.1"]
    # Which checkpoint the numbers describe.
    checkpoint = load_checkpoint(root / "experiments" / "tiny" / "checkpoint.ckpt")
    assert metrics["checkpoint_epoch"] == checkpoint["epoch"] == 1
    assert metrics["checkpoint_sha256"] == weights_sha256(checkpoint["model_state"])
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
    code, err = run_main(with_flags(args, "--exp-name", "nope"), capsys)
    assert code == 2 and "no experiment 'nope'" in err


def test_corrupt_checkpoint(experiment, tmp_path, capsys):
    _, args = experiment
    broken = tmp_path / "experiments" / "broken"
    broken.mkdir(parents=True)
    (broken / "checkpoint.ckpt").write_bytes(b"garbage")
    code, err = run_main(
        with_flags(args, "--exp-dir", str(tmp_path / "experiments"), "--exp-name", "broken"), capsys
    )
    assert code == 2 and "not a readable rnn-mnist checkpoint" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda(experiment, capsys):
    _, args = experiment
    code, err = run_main(with_flags(args, "--device", "cuda"), capsys)
    assert code == 2 and "no CUDA" in err


def _another_judge(folder, mnist_dir):
    """A judge made by the toolkit on the fixtures (one epoch, seconds)."""
    path = folder / "other.pt"
    if not path.exists():
        assert judge.main(["--out", str(path), "--data-dir", str(mnist_dir), "--epochs", "1"]) == 0
    return path


def test_judge_flag_uses_another_judge(experiment, mnist_dir, capsys):
    root, args = experiment
    other = _another_judge(root, mnist_dir)
    assert (
        evaluate.main([*args, "--out-dir", str(root / "other-judge"), "--no-gifs", "--judge", str(other)])
        == 0
    )
    metrics = json.loads((root / "other-judge" / "metrics.json").read_text())
    described = json.loads(other.with_suffix(".json").read_text())
    assert metrics["judge"]["sha256"] == described["sha256"] != judge.load_judge()[1]["sha256"]
    assert metrics["judge"]["path"] == str(other)
    assert described["sha256"][:12] in capsys.readouterr().out
    code, err = run_main([*args, "--judge", str(other), "--no-judge"], capsys)
    assert code == 2 and "--no-judge" in err


def test_a_bad_judge_fails_in_one_line_before_any_rollout(experiment, mnist_dir, capsys, monkeypatch):
    """Issue 11, finding 17: the judge was read only after the whole rollout, its error named no way out."""
    root, args = experiment
    other = _another_judge(root, mnist_dir)
    rollouts = []
    real_complete = evaluation.complete
    monkeypatch.setattr(evaluation, "complete", lambda *a, **k: rollouts.append(1) or real_complete(*a, **k))
    for case, (path, words) in _bad_judges(root, other).items():
        out = root / f"bad-judge-{case.replace(' ', '-')}"
        code, err = run_main([*args, "--out-dir", str(out), "--judge", str(path)], capsys)
        assert code == 2, case
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, (case, err)
        assert words in err and str(path.with_suffix("")) in err and "--no-judge" in err, (case, err)
        assert "Traceback" not in err and "weights_only=False" not in err
        assert not rollouts and not out.exists(), case


def test_an_experiment_folder_is_refused_as_out_dir(experiment, capsys):
    root, args = experiment
    folder = root / "experiments" / "tiny"
    before = folder_files(folder)
    code, err = run_main([*args, "--out-dir", str(folder), "--num-digits", "2", "--no-gifs"], capsys)
    assert code == 2 and "experiment folder" in err and len(err.strip().splitlines()) == 1
    assert folder_files(folder) == before  # the training metrics.json kept


def test_an_unwritable_out_dir_is_refused_before_the_rollout(experiment, capsys, monkeypatch, make_read_only):
    root, args = experiment

    def no_rollout_yet(*args, **kwargs):
        raise AssertionError("the rollout ran before the out-dir was checked")

    monkeypatch.setattr(evaluation, "complete", no_rollout_yet)
    (root / "locked").mkdir()
    make_read_only(root / "locked")
    code, err = run_main([*args, "--out-dir", str(root / "locked" / "out"), "--num-digits", "2"], capsys)
    assert code == 2 and "not writable" in err and len(err.strip().splitlines()) == 1, err


def test_inpainting_end_to_end_writes_mask_aware_metrics(experiment, capsys):
    root, args = experiment
    out = root / "inpaint"
    argv = [*args, "--out-dir", str(out), "--num-digits", "3", "--mask", "center:6", "--inpaint", "sample"]
    code, _ = run_main([*argv, "--particles", "4", "--sampling", "bernoulli", "--no-judge"], capsys)
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mask"] == "center:6" and metrics["mask_pixels"] == 36 and metrics["particles"] == 4
    assert 1 <= metrics["mean_effective_sample_size"] <= 4 and metrics["resampling_events"] >= 0
    with np.load(out / "completions.npz") as npz:
        hidden = npz["hidden"].reshape(784)
        assert hidden.sum() == 36 and hidden.reshape(28, 28)[11:17, 11:17].all()
        assert (
            npz["completed"].reshape(3, 784)[:, ~hidden] == npz["targets"].reshape(3, 784)[:, ~hidden]
        ).all()
    assert len(list(out.glob("*.gif"))) == 3


@pytest.mark.parametrize(
    "extra, phrase",
    [
        (["--particles", "4"], "--inpaint sample or best"),
        (["--inpaint", "sample", "--particles", "4"], "--sampling bernoulli"),
        (["--inpaint", "best", "--samples", "2", "--sampling", "bernoulli"], "--particles"),
        (["--mask", "center:99"], "center:99"),
        (["--mask", "center:4", "--mask-pixels", "100"], "--mask suffix:N"),
    ],
)
def test_inpainting_flags_that_mean_nothing_are_refused(experiment, capsys, extra, phrase):
    root, args = experiment
    code, err = run_main([*args, "--out-dir", str(root / "refused"), "--num-digits", "2", *extra], capsys)
    assert code == 2 and phrase in err and len(err.strip().splitlines()) == 1


def test_gif_of_a_hole_fills_it_in_pixel_order():
    hidden = np.zeros(784, bool)
    hidden[300:310] = hidden[600:605] = True
    target = np.ones(784, int)
    frames = visualise.triptych_frames(target, target, label=1, mask=hidden, max_frames=6)
    panel, top = 28 * visualise.SCALE, visualise.TITLE_HEIGHT
    left = 2 * visualise.GAP + panel

    def middle(frame, pixel):  # the colour of one pixel of the completion panel
        row, col = divmod(pixel, 28)
        return tuple(frame[top + row * visualise.SCALE, left + col * visualise.SCALE])

    assert middle(frames[0], 0) == visualise.GIVEN_ON and middle(frames[0], 300) == visualise.HIDDEN
    assert middle(frames[-1], 300) == middle(frames[-1], 604) == visualise.GENERATED_ON
    drawn = [[middle(f, p) == visualise.GENERATED_ON for p in np.flatnonzero(hidden)] for f in frames]
    assert all(a <= b for d in drawn for a, b in zip(d[1:], d, strict=False))  # filled in order
    assert sorted(map(sum, drawn)) == list(map(sum, drawn))  # and never unfilled


def _evaluate_into(out, args, *extra) -> list[str]:
    return [*args, "--out-dir", str(out), "--no-judge", *extra]


def test_sigkill_while_gifs_are_written_leaves_the_old_outputs_whole(experiment, capsys):
    """Issue 23, finding 5: a kill mid-GIFs left new completions beside the old metrics.json, a
    0-byte GIF, and old and new GIFs mixed."""
    root, args = experiment
    out = root / "killed"
    assert evaluate.main(_evaluate_into(out, args, "--num-digits", "6", "--seed", "0")) == 0
    before = folder_files(out)
    # Many GIFs (40 digits x 3 samples): seconds of writing them, time enough to kill the run midway.
    # fmt: off
    argv = _evaluate_into(out, args, "--num-digits", "40", "--seed", "1", "--sampling", "bernoulli",
                          "--samples", "3", "--gifs", "40")
    # fmt: on
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    process = subprocess.Popen([sys.executable, "evaluate.py", *argv], cwd=REPO, **quiet)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            # A GIF of the new run, wherever it is written (the output folder itself, before the fix).
            if list(root.glob(".killed.*/*.gif")) or folder_files(out) != before:
                break
            time.sleep(0.01)
        assert process.poll() is None, "the evaluation ended before it could be killed mid-GIFs"
        process.kill()  # SIGKILL: no chance to clean up
    finally:
        process.kill()
        process.wait()
    assert folder_files(out) == before  # the old outputs, complete and alone
    # The next evaluation removes what the killed one left, and its outputs are all its own.
    assert evaluate.main(_evaluate_into(out, args, "--num-digits", "2", "--seed", "2", "--no-gifs")) == 0
    assert not list(root.glob(".killed.*"))
    outputs = ["completions.npz", "completions.png", "evaluations.jsonl", "metrics.json"]
    assert sorted(p.name for p in out.iterdir()) == outputs
    logged = [json.loads(line)["seed"] for line in (out / "evaluations.jsonl").read_text().splitlines()]
    assert logged == [0, 2]  # the killed evaluation left no line


def test_a_second_evaluation_into_the_same_folder_is_refused_in_one_line(experiment, capsys):
    """Issue 23, finding 5: two evaluations at once ended with one's metrics.json beside the other's
    completions."""
    root, args = experiment
    out = root / "busy"
    assert evaluate.main(_evaluate_into(out, args, "--num-digits", "2", "--no-gifs")) == 0
    before = folder_files(out)
    capsys.readouterr()
    # The running evaluation's lock, as it holds it: flock on .<name>.lock beside the folder.
    with open(root / ".busy.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write(f"pid {os.getpid()} on this machine\n")
        held.flush()
        code, err = run_main(_evaluate_into(out, args, "--num-digits", "3", "--seed", "5"), capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "in use by another evaluation" in err and f"pid {os.getpid()}" in err and str(out) in err
    assert folder_files(out) == before


def test_a_new_evaluation_leaves_only_its_own_gifs(experiment, capsys):
    """Issue 23, finding 5: --seed 0 then --seed 1 left 16 GIFs for an 8-digit run."""
    root, args = experiment
    out = root / "reseeded"
    assert evaluate.main(_evaluate_into(out, args, "--num-digits", "6", "--seed", "0")) == 0
    assert evaluate.main(_evaluate_into(out, args, "--num-digits", "3", "--seed", "1")) == 0
    with np.load(out / "completions.npz") as npz:
        expected = {
            f"{label}-{index}.gif" for label, index in zip(npz["labels"], npz["indices"], strict=True)
        }
    assert {p.name for p in out.glob("*.gif")} == expected and len(expected) == 3
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["seed"] == 1 and metrics["num_digits"] == 3
    assert not [p for p in root.iterdir() if p.name.startswith(".reseeded")]  # no lock or temporary left


def test_a_folder_holding_other_files_is_refused_and_kept(experiment, capsys, monkeypatch):
    """An evaluation replaces its whole folder: one holding files it did not write is refused, not emptied."""
    root, args = experiment
    monkeypatch.setattr(evaluation, "complete", lambda *a, **k: pytest.fail("the rollout ran"))
    mine = root / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    (mine / "metrics.json").write_text("{}")
    code, err = run_main(_evaluate_into(mine, args, "--num-digits", "2"), capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "notes.txt" in err, err
    assert folder_files(mine) == {"notes.txt": b"mine", "metrics.json": b"{}"}


def test_the_summary_names_per_class_figures_and_says_what_a_blank_canvas_means(experiment, capsys):
    """Issue 21, finding 3: "per class accuracy" was masked pixel accuracy per class, easily read as
    classification accuracy; from a blank canvas, pixel accuracy against random test digits was shown."""
    root, args = experiment
    common = ["--num-digits", "20", "--no-gifs", "--no-judge"]
    assert evaluate.main([*args, "--out-dir", str(root / "named"), *common]) == 0
    printed = capsys.readouterr().out
    assert "masked pixel accuracy by class: " in printed and "per class accuracy" not in printed
    blank = [*args, "--out-dir", str(root / "named-blank"), "--mask-pixels", "784", "--sampling", "bernoulli"]
    assert evaluate.main([*blank, *common]) == 0
    printed = capsys.readouterr().out
    assert "pixel accuracy against test digits means nothing here" in printed
    assert "python -m rnn_mnist.sample" in printed and "python -m rnn_mnist.nll" in printed
    assert "masked pixel accuracy" not in printed and "per class accuracy" not in printed
    # metrics.json keeps its keys: the per-class figures were always named for what they are.
    metrics = json.loads((root / "named-blank" / "metrics.json").read_text())
    assert "masked_pixel_accuracy" in metrics and all(
        "masked_pixel_accuracy" in v for v in metrics["per_class"].values()
    )


def test_checkpoint_best_evaluates_the_best_validation_epoch(tmp_path, mnist_dir, capsys, monkeypatch):
    scripted_validation(monkeypatch, tasks.NextPixelTask, "val_nll_nats", [90.0, 80.0, 85.0])
    assert train.main(tiny_train_args(tmp_path / "experiments", mnist_dir, "best", "--epochs", "3")) == 0
    folder = tmp_path / "experiments" / "best"
    args = ["--exp-dir", str(tmp_path / "experiments"), "--exp-name", "best", "--data-dir", str(mnist_dir)]
    args += ["--num-digits", "4", "--no-gifs", "--no-judge", "--device", "cpu"]
    for which, epoch, file in (("best", 2, "best.ckpt"), ("last", 3, "checkpoint.ckpt")):
        out = tmp_path / which
        code, err = run_main([*args, "--out-dir", str(out), "--checkpoint", which], capsys)
        assert code == 0, err
        metrics = json.loads((out / "metrics.json").read_text())
        weights = load_checkpoint(folder / file)["model_state"]
        assert (metrics["checkpoint"], metrics["checkpoint_epoch"]) == (which, epoch)
        assert metrics["checkpoint_sha256"] == weights_sha256(weights)


def test_checkpoint_best_without_one_says_why(tmp_path, mnist_dir, capsys):
    argv = tiny_train_args(tmp_path / "experiments", mnist_dir, "noval", "--val-size", "0", "--epochs", "1")
    assert train.main(argv) == 0
    args = ["--exp-dir", str(tmp_path / "experiments"), "--exp-name", "noval"]
    args += ["--out-dir", str(tmp_path / "o")]
    code, err = run_main([*args, "--checkpoint", "best"], capsys)
    assert code == 2 and "no best.ckpt" in err and "--val-size 0" in err and "--checkpoint last" in err
    assert len(err.strip().splitlines()) == 1
    shipped = with_flags(args, "--exp-dir", str(REPO / "pretrained"), "--exp-name", "fast")
    code, err = run_main([*shipped, "--checkpoint", "best"], capsys)
    assert code == 2 and "shipped model keeps one checkpoint" in err


def test_a_missing_experiment_that_is_shipped_points_to_pretrained(tmp_path, capsys, monkeypatch):
    args = ["--exp-name", "fast", "--out-dir", str(tmp_path / "out")]
    monkeypatch.chdir(REPO)  # a fresh clone: experiments/ holds no fast, pretrained/ does
    code, err = run_main([*args, "--exp-dir", str(tmp_path / "experiments")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "no experiment 'fast' in" in err and "a shipped model of that name is in pretrained/" in err
    assert "add --exp-dir pretrained" in err and "train it first" not in err
    monkeypatch.chdir(tmp_path)  # elsewhere: the project's pretrained/ by its full path
    code, err = run_main([*args, "--exp-dir", "experiments"], capsys)
    assert f"add --exp-dir {REPO / 'pretrained'}" in err
    code, err = run_main([*with_flags(args, "--exp-name", "nope"), "--exp-dir", "experiments"], capsys)
    assert code == 2 and "train it first" in err and "pretrained" not in err


def _fake_gifs(monkeypatch) -> None:
    """GIFs as empty files: their names and number are what is checked, not their half second each."""
    monkeypatch.setattr(visualise, "triptych_frames", lambda *a, **k: [])
    monkeypatch.setattr(visualise, "save_gif", lambda path, frames: path.write_bytes(b""))


def test_gifs_are_capped_by_default_and_the_metrics_are_of_every_digit(experiment, capsys, monkeypatch):
    """Issue 21, finding 5: a 1,000-digit evaluation wrote 1,000 GIFs (100 s of writing for 0.16 s of
    rollout at 200 digits)."""
    _fake_gifs(monkeypatch)
    root, args = experiment
    out = root / "capped"
    digits = TEST_DIGITS - 4  # more than the default cap of 16
    assert evaluate.main(_evaluate_into(out, args, "--num-digits", str(digits))) == 0
    with np.load(out / "completions.npz") as npz:
        names = [f"{label}-{index}.gif" for label, index in zip(npz["labels"], npz["indices"], strict=True)]
    gifs = {p.name for p in out.glob("*.gif")}
    assert len(gifs) == 16 and gifs <= set(names)
    assert names[0] in gifs and names[-1] in gifs  # spread over the digits, not the first 16
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_digits"] == digits and metrics["gif_digits"] == 16
    assert f"GIFs of 16 of the {digits} digits" in capsys.readouterr().out
    cases = [
        (["--gifs", "3", "--sampling", "bernoulli", "--samples", "2"], 6),  # each sample of 3 digits
        (["--gifs", "0"], 0),
        (["--no-gifs"], 0),
        (["--gifs", "100"], digits),
    ]
    for flags, count in cases:
        assert evaluate.main(_evaluate_into(out, args, "--num-digits", str(digits), *flags)) == 0
        assert len(list(out.glob("*.gif"))) == count, flags


def test_gif_digits_spread_over_the_chosen_ones():
    assert evaluation.gif_digits(5, 16) == [0, 1, 2, 3, 4]
    assert evaluation.gif_digits(100, 0) == [] and evaluation.gif_digits(100, 1) == [0]
    assert evaluation.gif_digits(100, 10) == [0, 11, 22, 33, 44, 55, 66, 77, 88, 99]  # a row of each class
    for digits, cap in ((17, 16), (1000, 16), (31, 30)):
        chosen = evaluation.gif_digits(digits, cap)
        assert len(set(chosen)) == cap and chosen[-1] == digits - 1


def test_every_evaluation_into_a_folder_is_kept_in_its_log(experiment, capsys):
    """Issue 21, finding 4: a later 16-digit evaluation silently replaced a 200-digit one."""
    root, args = experiment
    out = root / "logged"
    out.mkdir()
    # An evaluation made before the log existed: its metrics.json is the log's first line.
    (out / "metrics.json").write_text(json.dumps({"experiment": "tiny", "num_digits": 200, "per_class": {}}))
    assert evaluate.main(_evaluate_into(out, args, "--num-digits", "6", "--no-gifs")) == 0
    assert evaluate.main(_evaluate_into(out, args, "--num-digits", "2", "--no-gifs", "--seed", "1")) == 0
    assert evaluate.main(_evaluate_into(out, args, "--num-digits", "2", "--no-gifs", "--seed", "1")) == 0
    logged = [json.loads(line) for line in (out / "evaluations.jsonl").read_text().splitlines()]
    assert [e["num_digits"] for e in logged] == [200, 6, 2, 2]
    assert all("per_class" not in e for e in logged)
    latest = json.loads((out / "metrics.json").read_text())
    assert logged[-1] == {k: v for k, v in latest.items() if k != "per_class"}
    # Which digits, and when: the same digits give the same fingerprint, others another.
    first, second, third = logged[1:]
    assert first["evaluated_at"] <= second["evaluated_at"] <= third["evaluated_at"]
    assert second["digits_sha256"] == third["digits_sha256"] != first["digits_sha256"]
    assert first["binarization"] == "threshold-0.1" and len(first["digits_sha256"]) == 64
    with np.load(out / "completions.npz") as npz:
        targets = torch.from_numpy(npz["targets"]).reshape(2, -1)
        assert evaluation.digits_sha256(targets, torch.from_numpy(npz["labels"])) == third["digits_sha256"]
