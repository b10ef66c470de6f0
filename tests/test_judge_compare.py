"""The digit judge, class agreement, and the experiment comparison."""

from __future__ import annotations

import json
import os
import pickle

import imageio.v3 as iio
import pytest
import torch
from conftest import run_main, tiny_train_args

import train
from rnn_mnist import compare, judge
from rnn_mnist.checkpoint import load_checkpoint, weights_sha256
from rnn_mnist.data import BINARIZATIONS, binarization_name
from rnn_mnist.errors import RnnMnistError
from rnn_mnist.scoring import agreement_metrics


def test_judge_gives_ten_class_logits_and_learns():
    torch.manual_seed(0)
    model = judge.DigitJudge()
    images = torch.bernoulli(torch.full((32, 1, 28, 28), 0.2))
    labels = torch.arange(32) % 10
    assert model(images).shape == (32, 10)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = [judge.train_step(model, optimizer, images, labels) for _ in range(40)]
    assert losses[-1] < 0.75 * losses[0]  # it can fit a batch: the training step really trains


def test_random_shift_translates_by_at_most_two_pixels():
    image = torch.zeros(1, 1, 28, 28)
    image[0, 0, 10:15, 12:16] = 1
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        shifted = judge.random_shift(image, generator)
        matches = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if torch.equal(shifted, torch.roll(image, (dy, dx), dims=(2, 3)))
        ]
        assert len(matches) == 1


def test_shipped_judge_is_small_fp16_hashed_and_tested_on_every_binarisation():
    model, info = judge.load_judge()  # the one evaluate.py uses unless told otherwise
    state = torch.load(judge.SHIPPED_JUDGE, weights_only=True)
    assert all(t.dtype == torch.float16 for t in state.values())
    assert info["sha256"] == weights_sha256(state) and info["storage"] == "float16"
    assert judge.SHIPPED_JUDGE.stat().st_size < 1_000_000
    # Every binarisation train.py offers, at its default threshold and at 0.5.
    names = {binarization_name(method, 0.1) for method in BINARIZATIONS} | {"threshold-0.5"}
    assert names <= set(info["test_accuracy"])
    assert all(info["test_accuracy"][name] >= 0.99 for name in names), info["test_accuracy"]
    assert "python -m rnn_mnist.judge" in info["training"]["command"] and info["training"]["seed"] == 0
    probs = judge.classify(model, torch.zeros(3, 784, dtype=torch.uint8))
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(3))


def test_retraining_a_judge_is_reproducible(tmp_path, mnist_dir, capsys):
    infos = []
    for name in ("a.pt", "b.pt"):
        out = tmp_path / name
        assert judge.main(["--out", str(out), "--data-dir", str(mnist_dir), "--epochs", "1"]) == 0
        infos.append(json.loads(out.with_suffix(".json").read_text()))
        _, loaded = judge.load_judge(out)
        assert loaded["sha256"] == infos[-1]["sha256"] == weights_sha256(torch.load(out, weights_only=True))
    assert infos[0]["sha256"] == infos[1]["sha256"]  # seeded: the same weights, bit for bit
    assert infos[0]["test_accuracy"] == infos[1]["test_accuracy"]
    assert set(infos[0]["test_accuracy"]) == set(judge.TEST_BINARIZATIONS)
    assert infos[0]["training"]["command"].endswith(
        f"--out {tmp_path / 'a.pt'} --data-dir {mnist_dir} --epochs 1"
    )
    assert "sha256" in capsys.readouterr().out
    # An existing judge is never replaced by accident; the weights file must be a .pt.
    code, err = run_main(judge.main, ["--out", str(tmp_path / "a.pt"), "--data-dir", str(mnist_dir)], capsys)
    assert code == 2 and "already" in err and "--overwrite" in err
    code, err = run_main(judge.main, ["--out", str(tmp_path / "j.json")], capsys)
    assert code == 2 and ".pt" in err and len(err.strip().splitlines()) == 1


def test_class_agreement_by_hand():
    labels = torch.tensor([3, 3, 7])
    predicted = torch.tensor([[3, 5], [3, 3], [1, 1]])  # per digit: 1/2, 2/2, 0/2 -> mean 0.5
    metrics = agreement_metrics(
        predicted,
        torch.full((3, 2), 0.9),
        torch.tensor([3, 0, 0]),
        torch.tensor([3, 3, 7]),
        labels,
        from_scratch=False,
    )
    assert metrics["class_agreement"] == pytest.approx(0.5)
    assert metrics["class_agreement_prefix_only"] == pytest.approx(1 / 3)
    assert metrics["class_agreement_ground_truth"] == pytest.approx(1.0)
    assert metrics["per_class"]["3"]["class_agreement"] == pytest.approx(0.75)
    assert "generated_class_histogram" not in metrics
    blank = agreement_metrics(predicted, torch.full((3, 2), 0.9), labels, labels, labels, from_scratch=True)
    assert blank["generated_class_histogram"] == [0, 2, 0, 3, 0, 1, 0, 0, 0, 0]
    assert blank["mean_judge_confidence"] == pytest.approx(0.9)


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "metrics.pkl"
    path.write_bytes(pickle.dumps({"config": {}, "history": [Exploit()]}))
    with pytest.raises(RnnMnistError, match="refusing"):
        compare.load_plain_pickle(path)
    assert not marker.exists()
    path.write_bytes(pickle.dumps({"config": {"lr": 1e-3, "milestones": (2, 3)}, "history": [{"epoch": 1}]}))
    assert compare.load_plain_pickle(path)["config"]["milestones"] == (2, 3)


def test_compare_two_tiny_experiments(tmp_path, mnist_dir, capsys):
    exp_dir = tmp_path / "experiments"
    for hidden in ("8", "12"):
        assert train.main(tiny_train_args(exp_dir, mnist_dir, f"h{hidden}", "--hidden", hidden)) == 0
    out, evaluations = tmp_path / "plots", tmp_path / "evaluations"
    (evaluations / "h8").mkdir(parents=True)  # as if evaluate.py had run on h8's checkpoint only
    checkpoint = load_checkpoint(exp_dir / "h8" / "checkpoint.ckpt")
    evaluation = {
        "checkpoint_epoch": checkpoint["epoch"],
        "checkpoint_sha256": weights_sha256(checkpoint["model_state"]),
        "masked_pixel_accuracy": 0.8123,
        "class_agreement": 0.765,
    }
    (evaluations / "h8" / "metrics.json").write_text(json.dumps(evaluation))
    # fmt: off
    code = compare.main([str(exp_dir / "h8"), str(exp_dir / "h12"), "--name", "hidden", "--out-dir", str(out),
                         "--eval-dir", str(evaluations)])
    # fmt: on
    assert code == 0
    assert iio.imread(out / "compare-hidden.png").ndim == 3
    markdown = (out / "compare-hidden.md").read_text()
    assert markdown.strip() in capsys.readouterr().out
    rows = [line.split("|")[1:-1] for line in markdown.splitlines()[2:]]
    for row, name in zip(rows, ("h8", "h12"), strict=True):
        with open(exp_dir / name / "metrics.pkl", "rb") as f:
            metrics = pickle.load(f)
        last = metrics["history"][-1]
        cells = [c.strip() for c in row]
        assert cells[0] == name and cells[2] == str(metrics["model_config"]["hidden_size"])
        assert cells[4] == f"{metrics['num_parameters']:,}" and cells[5] == str(len(metrics["history"]))
        assert cells[7] == f"{min(h['val_nll_nats'] for h in metrics['history']):.2f}"
        assert cells[8] == f"{last['test_nll_nats']:.2f}" and cells[9] == f"{last['test_bits_per_pixel']:.4f}"
        assert cells[10:] == (["0.8123", "0.765"] if name == "h8" else ["-", "-"])
    experiments = [compare.load_experiment(exp_dir / n, out) for n in ("h8", "h12")]
    assert compare.differences(experiments) == ["hidden_size=8", "hidden_size=12"]


def test_compare_refuses_a_folder_without_metrics(tmp_path, capsys):
    code = compare.main([str(tmp_path), "--name", "x", "--out-dir", str(tmp_path / "plots")])
    assert code == 2 and "no metrics" in capsys.readouterr().err
