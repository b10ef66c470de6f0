"""The digit judge: a small CNN that says which digit a binary 28x28 image shows.

It turns "the completions look sensible" into a number: the fraction of completions it reads as
the true digit. One judge ships with the code, so that every evaluation is judged by the same one:
rnn_mnist/weights/judge.pt (its weights, an fp16 state dict) and judge.json beside it (their
sha256, the test accuracy per binarisation measured once when it was made, and how it was made).

    judge, info = load_judge()                                      # the shipped judge
    judge, info = load_judge("my-judge.pt")                         # another, made by this module
    probs = classify(judge, pixels)                                 # (N, 784) uint8 -> (N, 10)
    python -m rnn_mnist.judge --data-dir ../shared/mnist --out my-judge.pt   # retrain (seeded)
"""

from __future__ import annotations

import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rnn_mnist.checkpoint import atomic_write, safe_torch_load, weights_sha256
from rnn_mnist.cli import DefaultsHelpFormatter, ShortErrorParser, positive_int, rng_seed, run_cli
from rnn_mnist.data import IMAGE_SIDE, DataConfig, binarize, load_test_digits
from rnn_mnist.errors import RnnMnistError
from rnn_mnist.mnist_files import load_mnist_split
from rnn_mnist.progress import progress
from rnn_mnist.runtime import set_seed
from rnn_mnist.training import optimize

SHIPPED_JUDGE = Path(__file__).resolve().parent / "weights" / "judge.pt"
JUDGE_FORMAT = "rnn-mnist-judge"
JUDGE_VERSION = 1
# fp16 halves the file; on the 10,000 test digits it changed no prediction of the shipped judge.
STORAGE_DTYPE = torch.float16
MAX_SHIFT = 2  # pixels of random translation during training
# The binarisations the judge is tested on: every kind train.py offers, on the 10,000 test digits
# as train.py binarises them (data seed 0). Dynamic test digits are one fixed draw, like static ones.
TEST_BINARIZATIONS = {
    "threshold-0.1": ("threshold", 0.1),
    "threshold-0.5": ("threshold", 0.5),
    "static": ("static", 0.1),
    "dynamic": ("dynamic", 0.1),
}
_WAY_FORWARD = "pass --judge a file made by `python -m rnn_mnist.judge --out PATH`, or --no-judge"
# An evaluation says the judge's claimed test accuracy is false when it reads the true digits this
# far below it, and a judge as good as claimed would do so worse with less than this chance
# (implausible_judge).
IMPLAUSIBLE_SHORTFALL = 0.2
IMPLAUSIBLE_CHANCE = 1e-6


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
    """The fraction of binary pixels (N, 784) the judge reads as their labels (N,)."""
    return (classify(judge, pixels).argmax(dim=1) == labels).sum().item() / max(len(labels), 1)


def train_judge(
    data_dir: str | None, epochs: int = 6, batch_size: int = 128, seed: int = 0
) -> tuple[DigitJudge, dict[str, Any]]:
    """Train on all 60k training digits, seeded; return the judge and how it was trained."""
    set_seed(seed)
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
    training = {
        "epochs": epochs,
        "batch_size": batch_size,
        "seed": seed,
        "train_digits": len(grey),
        "train_seconds": time.perf_counter() - started,
        "torch": torch.__version__,
    }
    return judge.eval(), training


def stored_state(judge: DigitJudge) -> dict[str, torch.Tensor]:
    """The judge's weights as they are stored: CPU tensors, floating point ones in fp16."""
    return {
        name: (t.to(STORAGE_DTYPE) if t.is_floating_point() else t).detach().cpu().contiguous()
        for name, t in judge.state_dict().items()
    }


def judge_from_state(state: dict[str, torch.Tensor]) -> DigitJudge:
    """A judge computing in fp32 with the stored (fp16) weights."""
    judge = DigitJudge()
    judge.load_state_dict({name: t.float() if t.is_floating_point() else t for name, t in state.items()})
    return judge.eval()


def measure_accuracies(judge: DigitJudge, data_dir: str | None) -> dict[str, float]:
    """Accuracy on the MNIST test digits under each of TEST_BINARIZATIONS."""
    result = {}
    for name, (method, threshold) in TEST_BINARIZATIONS.items():
        pixels, labels = load_test_digits(DataConfig(data_dir=data_dir, binarize=method, threshold=threshold))
        result[name] = accuracy(judge, pixels, labels)
    return result


def info_path(path: Path) -> Path:
    """Where a judge's description lives: beside its weights, as .json."""
    return Path(path).with_suffix(".json")


def save_judge(path: Path, state: dict[str, torch.Tensor], info: dict[str, Any]) -> dict[str, Any]:
    """Write the weights and, beside them, their hash and ``info`` (test accuracy, training);
    both atomically. Returns the description written."""
    path = Path(path)
    described = {
        "format": JUDGE_FORMAT,
        "version": JUDGE_VERSION,
        "sha256": weights_sha256(state),
        "storage": str(STORAGE_DTYPE).removeprefix("torch."),
        "parameters": sum(t.numel() for t in state.values()),
        **info,
    }
    atomic_write(path, lambda f: torch.save(state, f))
    text = json.dumps(described, indent=2) + "\n"
    atomic_write(info_path(path), lambda f: f.write(text.encode()))
    return described


def make_judge(
    path: Path, data_dir: str | None, epochs: int = 6, seed: int = 0, command: str = ""
) -> dict[str, Any]:
    """Train a judge, store it in fp16, and measure the stored weights on the test digits."""
    judge, training = train_judge(data_dir, epochs=epochs, seed=seed)
    state = stored_state(judge)
    accuracies = measure_accuracies(judge_from_state(state), data_dir)  # of the weights as shipped
    info = {"test_accuracy": accuracies, "training": {"command": command, **training}}
    return save_judge(path, state, info)


def _read_description(described: Path, path: Path) -> dict[str, Any]:
    """The judge's ``.json`` description (its hash and test accuracy), checked for its shape."""
    try:
        info = json.loads(described.read_text())
    except FileNotFoundError:
        raise RnnMnistError(
            f"{path} has no {described.name} beside it (its hash and test accuracy); {_WAY_FORWARD}"
        ) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RnnMnistError(f"{described} is not readable JSON ({exc}); {_WAY_FORWARD}") from None
    if not (
        isinstance(info, dict)
        and info.get("format") == JUDGE_FORMAT
        and isinstance(info.get("sha256"), str)
        and isinstance(info.get("test_accuracy"), dict)
    ):
        raise RnnMnistError(f"{described} does not describe a digit judge; {_WAY_FORWARD}")
    return info


def load_judge(path: str | Path | None = None) -> tuple[DigitJudge, dict[str, Any]]:
    """The judge stored at ``path`` (default: the shipped one) and its description.

    A missing, corrupt or foreign file, or weights whose hash is not the one their description
    records, is an RnnMnistError naming the way forward.
    """
    path = Path(path) if path is not None else SHIPPED_JUDGE
    described = info_path(path)
    if not path.is_file():
        raise RnnMnistError(f"no digit judge at {path}; {_WAY_FORWARD}")
    info = _read_description(described, path)
    if info.get("version") != JUDGE_VERSION:
        raise RnnMnistError(
            f"{described} is judge version {info.get('version')}, this rnn-mnist reads {JUDGE_VERSION}"
        )
    try:
        state = safe_torch_load(path)
    except Exception as exc:  # truncated, not a torch file, or refused by the safe loader
        raise RnnMnistError(
            f"{path} is not a readable digit judge ({type(exc).__name__}: it is corrupt, or holds more "
            f"than plain tensors); {_WAY_FORWARD}"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise RnnMnistError(f"{path} is not a state dict of tensors; {_WAY_FORWARD}")
    sha256 = weights_sha256(state)
    if sha256 != info["sha256"]:
        raise RnnMnistError(
            f"{path} holds weights with sha256 {sha256[:12]}, but {described.name} describes "
            f"{info['sha256'][:12]}: the two files are not of one judge; {_WAY_FORWARD}"
        )
    # A hash matches whatever weights it was computed from: NaN weights with their own judge.json
    # would read every digit as one class, and the test accuracy in it would be a claim, not a fact.
    not_finite = [name for name, t in state.items() if t.is_floating_point() and not t.isfinite().all()]
    if not_finite:
        raise RnnMnistError(
            f"{path} holds weights that are not finite numbers (NaN or infinity in {not_finite[0]}); "
            f"{_WAY_FORWARD}"
        )
    try:
        judge = judge_from_state(state)
    except RuntimeError:
        raise RnnMnistError(
            f"{path} is not a digit judge of this version (its tensors do not fit); {_WAY_FORWARD}"
        ) from None
    # The shipped judge is named as in the repository, not by where this clone happens to live.
    shown = "rnn_mnist/weights/judge.pt" if path.resolve() == SHIPPED_JUDGE else str(path)
    return judge, {**info, "path": shown}


def implausible_judge(info: dict[str, Any], claimed: object, ground_truth: float, digits: int) -> str | None:
    """One line when the judge read far fewer of ``digits`` true digits as their labels (its
    ``ground_truth`` agreement) than the test accuracy its description claims; else None.

    ``claimed`` is its test accuracy on this binarisation, if measured; else the lowest it claims
    on any. Said when both hold: the agreement is IMPLAUSIBLE_SHORTFALL or more below the claim, and
    a judge as good as claimed would make as many mistakes with probability below
    IMPLAUSIBLE_CHANCE (the binomial tail), so that a few unlucky digits never raise it.
    """
    claims = [v for v in info.get("test_accuracy", {}).values() if _is_accuracy(v)]
    claim = claimed if _is_accuracy(claimed) else min(claims, default=None)
    if claim is None or digits < 1 or claim - ground_truth < IMPLAUSIBLE_SHORTFALL:
        return None
    mistakes = round((1 - ground_truth) * digits)
    if _chance_of_at_least(mistakes, digits, 1 - claim) >= IMPLAUSIBLE_CHANCE:
        return None
    return (
        f"the judge read only {ground_truth:.3f} of {digits} true test digits as their labels, though its "
        f"{info_path(Path(info.get('path', 'judge.pt'))).name} claims a test accuracy of {claim:.4f}: "
        "its class agreement is not to be trusted"
    )


def _is_accuracy(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1


def _chance_of_at_least(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed in log space (n may be 10,000 digits)."""
    if k <= 0 or p >= 1:
        return 1.0
    if p <= 0:
        return 0.0
    log_choose = math.lgamma(n + 1)
    log_terms = (
        log_choose - math.lgamma(j + 1) - math.lgamma(n - j + 1) + j * math.log(p) + (n - j) * math.log1p(-p)
        for j in range(k, n + 1)
    )
    return min(1.0, sum(math.exp(t) for t in log_terms))


def main(argv: list[str] | None = None) -> int:
    parser = ShortErrorParser(
        prog="python -m rnn_mnist.judge",
        description="Train a digit judge (seeded): its weights go to --out, and beside them a .json with "
        "their sha256, the test accuracy per binarisation and how they were made.",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument(
        "--out", type=Path, required=True, metavar="PATH", help="the weights file to write (.pt)"
    )
    parser.add_argument("--data-dir", default=None, help="folder holding MNIST/raw; unset: $RNN_MNIST_DATA")
    parser.add_argument("--epochs", type=positive_int, default=6, help="training epochs over the 60k digits")
    parser.add_argument(
        "--seed", type=rng_seed, default=0, help="seeds initialisation, order and augmentation"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing judge at --out")
    args = parser.parse_args(argv)
    if args.out.suffix != ".pt":
        parser.error(f"--out must name a .pt file (its description goes beside it as .json), not {args.out}")
    command = "python -m rnn_mnist.judge " + shlex.join(sys.argv[1:] if argv is None else argv)

    def run() -> None:
        if args.out.exists() and not args.overwrite:
            raise RnnMnistError(f"a judge is already at {args.out}; pass --overwrite to replace it")
        info = make_judge(args.out, args.data_dir, epochs=args.epochs, seed=args.seed, command=command)
        accuracies = ", ".join(f"{k} {v:.4f}" for k, v in info["test_accuracy"].items())
        seconds = info["training"]["train_seconds"]
        print(f"judge saved to {args.out} and {info_path(args.out).name} ({seconds:.0f} s of training)")
        print(f"sha256 {info['sha256']}; test accuracy: {accuracies}")

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
