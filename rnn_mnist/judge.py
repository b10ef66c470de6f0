"""The digit judge: a small CNN that says which digit a binary 28x28 image shows.

It turns "the completions look sensible" into a number: the fraction of completions it reads as
the true digit. Trained once on binarised MNIST (thresholds and Bernoulli draws mixed, with small
random shifts so that it judges shape, not position) and cached under the experiments folder.

    python -m rnn_mnist.judge --data-dir ../shared/mnist          # train and cache it (a few minutes)
    judge = load_or_train_judge("experiments", data_dir)           # evaluate.py does this on first need
    probs = classify(judge, pixels)                                 # (N, 784) uint8 -> (N, 10)
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rnn_mnist.checkpoint import atomic_write, json_bytes, load_checkpoint, save_checkpoint
from rnn_mnist.cli import DefaultsHelpFormatter, positive_int, rng_seed, run_cli
from rnn_mnist.data import IMAGE_SIDE, DataConfig, binarize, load_mnist_split, load_test_digits
from rnn_mnist.errors import RnnMnistError
from rnn_mnist.progress import progress
from rnn_mnist.training import optimize

JUDGE_FOLDER = "judge"
MAX_SHIFT = 2  # pixels of random translation during training
# The binarisations the judge is tested on: every kind train.py offers.
TEST_BINARIZATIONS = {
    "threshold-0.1": ("threshold", 0.1),
    "threshold-0.5": ("threshold", 0.5),
    "static": ("static", 0),
}


class DigitJudge(nn.Module):
    """Two conv blocks and a small classifier: about 0.4M parameters, 99%+ on binarised MNIST."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 32, 14, 14)
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 64, 7, 7)
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, 10)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits (B, 10) for float images (B, 1, 28, 28) in {0, 1}."""
        return self.classifier(self.features(images))


def as_images(pixels: torch.Tensor) -> torch.Tensor:
    """(N, 784) pixels of any dtype -> (N, 1, 28, 28) float."""
    return pixels.reshape(-1, 1, IMAGE_SIDE, IMAGE_SIDE).float()


def random_shift(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to MAX_SHIFT pixels in x and y, filling with background."""
    n = len(images)
    shifts = torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (n, 2), generator=generator)
    padded = F.pad(images, (MAX_SHIFT,) * 4)
    rows = torch.arange(IMAGE_SIDE)[None, :] + MAX_SHIFT - shifts[:, :1]  # (N, 28)
    cols = torch.arange(IMAGE_SIDE)[None, :] + MAX_SHIFT - shifts[:, 1:]
    batch = torch.arange(n)[:, None, None]
    return padded[batch, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


def random_binarization(grey: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One of the toolkit's binarisations, picked per batch: a threshold in [0.05, 0.6] or a draw."""
    if torch.rand((), generator=generator) < 0.5:
        return binarize(grey, "static", 0, generator)
    threshold = 0.05 + 0.55 * torch.rand((), generator=generator).item()
    return binarize(grey, "threshold", threshold)


def train_step(
    judge: DigitJudge, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor
) -> float:
    """One cross-entropy update on float images (B, 1, 28, 28)."""
    return optimize(judge, optimizer, F.cross_entropy(judge(images), labels), clip=None).item()


@torch.no_grad()
def classify(judge: DigitJudge, pixels: torch.Tensor, batch_size: int = 2000) -> torch.Tensor:
    """Class probabilities (N, 10) of binary pixels (N, 784)."""
    judge.eval()
    device = next(judge.parameters()).device
    out = [
        F.softmax(judge(as_images(pixels[i : i + batch_size]).to(device)), dim=1).cpu()
        for i in range(0, len(pixels), batch_size)
    ]
    return torch.cat(out) if out else torch.empty(0, 10)


def accuracy(judge: DigitJudge, pixels: torch.Tensor, labels: torch.Tensor) -> float:
    return (classify(judge, pixels).argmax(dim=1) == labels).float().mean().item()


def train_judge(
    data_dir: str | None, epochs: int = 6, batch_size: int = 128, seed: int = 0
) -> tuple[DigitJudge, dict]:
    """Train on all 60k training digits; return the judge and its test accuracies per binarisation."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    grey, labels = load_mnist_split(data_dir, train=True)
    judge = DigitJudge()
    optimizer = torch.optim.Adam(judge.parameters(), lr=2e-3)
    steps = epochs * math.ceil(len(grey) / batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        judge.train()
        order = torch.randperm(len(grey), generator=generator)
        bar = progress(range(0, len(grey), batch_size), f"judge epoch {epoch}/{epochs}", unit="batch")
        for start in bar:
            idx = order[start : start + batch_size]
            images = random_shift(as_images(random_binarization(grey[idx], generator)), generator)
            loss = train_step(judge, optimizer, images, labels[idx])
            scheduler.step()
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
    report = {"epochs": epochs, "train_seconds": time.perf_counter() - started, "test_accuracy": {}}
    for name, (method, threshold) in TEST_BINARIZATIONS.items():
        test, test_labels = load_test_digits(
            DataConfig(data_dir=data_dir, binarize=method, threshold=threshold)
        )
        report["test_accuracy"][name] = accuracy(judge, test, test_labels)
    return judge, report


def judge_path(exp_dir: str) -> Path:
    return Path(exp_dir) / JUDGE_FOLDER / "judge.ckpt"


def load_judge(path: Path) -> tuple[DigitJudge, dict]:
    checkpoint = load_checkpoint(path)
    judge = DigitJudge()
    try:
        judge.load_state_dict(checkpoint["model_state"])
    except RuntimeError as exc:
        raise RnnMnistError(f"{path} is not a digit judge of this version ({exc})") from None
    return judge.eval(), checkpoint["report"]


def save_judge(path: Path, judge: DigitJudge, report: dict) -> None:
    save_checkpoint(
        path,
        {
            "model_config": {"kind": "digit-judge"},
            "model_state": judge.state_dict(),
            "optimizer_state": {},
            "scheduler_state": {},
            "epoch": report["epochs"],
            "report": report,
        },
    )
    atomic_write(path.with_suffix(".json"), lambda f: f.write(json_bytes(report)))


def load_or_train_judge(exp_dir: str, data_dir: str | None) -> tuple[DigitJudge, dict]:
    """The cached judge, trained first (and cached) if there is none yet."""
    path = judge_path(exp_dir)
    if path.exists():
        return load_judge(path)
    print(f"no digit judge at {path} yet: training it once (a few minutes on a CPU)", file=sys.stderr)
    judge, report = train_judge(data_dir)
    save_judge(path, judge, report)
    return judge.eval(), report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rnn_mnist.judge",
        description="Train the digit judge once and cache it in <exp-dir>/judge/.",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("--exp-dir", default="experiments", help="where the judge is cached")
    parser.add_argument("--data-dir", default=None, help="folder holding MNIST/raw; unset: $RNN_MNIST_DATA")
    parser.add_argument("--epochs", type=positive_int, default=6, help="training epochs over the 60k digits")
    parser.add_argument("--seed", type=rng_seed, default=0, help="seeds initialisation and augmentation")
    parser.add_argument("--overwrite", action="store_true", help="retrain even if a judge is cached")
    args = parser.parse_args(argv)
    path = judge_path(args.exp_dir)
    if path.exists() and not args.overwrite:
        print(f"error: a judge is already cached at {path}; pass --overwrite to retrain it", file=sys.stderr)
        return 2

    def run() -> None:
        judge, report = train_judge(args.data_dir, epochs=args.epochs, seed=args.seed)
        save_judge(path, judge, report)
        accuracies = ", ".join(f"{k} {v:.4f}" for k, v in report["test_accuracy"].items())
        print(f"judge saved to {path} ({report['train_seconds']:.0f} s); test accuracy: {accuracies}")

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
