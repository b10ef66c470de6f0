"""rnn_mnist/judge.py: the digit judge."""

from __future__ import annotations

import json

import torch
from conftest import run_main

from rnn_mnist import judge
from rnn_mnist.checkpoint import weights_sha256
from rnn_mnist.data import BINARIZATIONS, binarization_name


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
