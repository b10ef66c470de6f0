"""Make the README's completion GIFs from the shipped models: successes and honest failures.

Usage:
    python docs/make_gifs.py --data-dir ../shared/mnist

Completes --candidates seeded random test digits with pretrained/fast (greedy, last 284 pixels
hidden) and reads every completion with the shipped judge. Writes to docs/gifs/:
- success-*.gif: digits the judge could not read from the visible pixels alone but reads right
  once completed (the completion supplied the class);
- failure-*.gif: digits the judge reads right in full but wrong once completed;
- inpaint-*.gif: the first success's digit in-painted through a centre hole by sequential Monte
  Carlo (32 particles), beside blind filling of the same hole.
The choice is deterministic (seeded digits, greedy completions), so the files change only when
the models, the judge or the code do.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rnn_mnist import visualise  # noqa: E402
from rnn_mnist.data import DataConfig, load_test_digits  # noqa: E402
from rnn_mnist.evaluation import choose_indices, load_model  # noqa: E402
from rnn_mnist.judge import classify, load_judge  # noqa: E402
from rnn_mnist.masks import parse_mask, suffix_mask  # noqa: E402
from rnn_mnist.rollout import complete  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--data-dir", default=None, help="folder holding MNIST/raw")
    parser.add_argument("--candidates", type=int, default=300, help="test digits to choose from")
    parser.add_argument("--successes", type=int, default=3, help="success GIFs")
    parser.add_argument("--failures", type=int, default=2, help="failure GIFs")
    parser.add_argument("--out-dir", default=str(REPO / "docs" / "gifs"), help="where the GIFs go")
    args = parser.parse_args()

    model, checkpoint = load_model(REPO / "pretrained" / "fast" / "checkpoint.ckpt", torch.device("cpu"))
    judge, _ = load_judge()
    config = DataConfig.from_dict({**checkpoint["data_config"], "data_dir": args.data_dir})
    pixels, labels = load_test_digits(config)
    chosen = choose_indices(labels, None, args.candidates, None, seed=0)
    targets, labels = pixels[chosen], labels[chosen]
    completed = complete(model, targets, 284).completed[:, 0]
    read = classify(judge, completed).argmax(dim=1)
    read_visible = classify(judge, targets.masked_fill(suffix_mask(284), 0)).argmax(dim=1)
    read_truth = classify(judge, targets).argmax(dim=1)
    success = torch.nonzero((read == labels) & (read_visible != labels)).flatten()[: args.successes]
    failure = torch.nonzero((read != labels) & (read_truth == labels)).flatten()[: args.failures]

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.gif"):
        old.unlink()
    for kind, rows in (("success", success), ("failure", failure)):
        for i in rows.tolist():
            name = f"{kind}-{int(labels[i])}-{int(chosen[i])}.gif"
            frames = visualise.triptych_frames(completed[i].numpy(), targets[i].numpy(), int(labels[i]), 284)
            visualise.save_gif(out / name, frames)
            print(f"{name}: judged {int(read[i])} (visible pixels only: {int(read_visible[i])})")

    hidden = parse_mask("center:14")
    i = int(success[0]) if len(success) else 0
    digit = targets[i : i + 1]
    for inpaint, particles in (("blind", 1), ("sample", 32)):
        generator = torch.Generator().manual_seed(0)
        filled = complete(
            model,
            digit,
            hidden=hidden,
            sampling="bernoulli",
            samples=particles,
            inpaint=inpaint,
            generator=generator,
        ).completed[0, 0]
        name = f"inpaint-{inpaint}-{int(labels[i])}-{int(chosen[i])}.gif"
        frames = visualise.triptych_frames(filled.numpy(), digit[0].numpy(), int(labels[i]), hidden.numpy())
        visualise.save_gif(out / name, frames)
        print(f"{name}: judged {int(classify(judge, filled[None]).argmax())}")


if __name__ == "__main__":
    main()
