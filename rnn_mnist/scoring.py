"""How completions are scored: masked pixel accuracy and NLL over the hidden pixels, and the digit
judge's class agreement beside its floor (the visible pixels alone) and ceiling (the true digit).

    metrics = completion_metrics(completed, targets, labels, nll, hidden)  # completed: (N, K, 784)
    judged = judge_completions(judge, completed, targets, labels, hidden)  # class agreement

Plain tensors in, plain numbers out: rnn_mnist/evaluation.py rolls out, these measure.
"""

from __future__ import annotations

from typing import Any

import torch

from rnn_mnist.data import NUM_PIXELS
from rnn_mnist.judge import DigitJudge, classify


def completion_metrics(
    completed: torch.Tensor,
    targets: torch.Tensor,
    labels: torch.Tensor,
    nll: torch.Tensor,
    hidden: torch.Tensor,
) -> dict[str, Any]:
    """Masked pixel accuracy and NLL over the ``hidden`` pixels (784,) bool, overall and per class;
    completed is (N, K, 784)."""
    correct = (completed[:, :, hidden] == targets[:, None, hidden]).float().mean(dim=(1, 2))  # (N,)
    per_class = {
        str(d): {
            "count": int((labels == d).sum()),
            "masked_pixel_accuracy": float(correct[labels == d].mean()),
            "masked_nll_nats": float(nll[labels == d].mean()),
        }
        for d in labels.unique().tolist()
    }
    return {
        "masked_pixel_accuracy": float(correct.mean()),
        "masked_nll_nats": float(nll.mean()),
        "per_class": per_class,
    }


def agreement_metrics(
    predicted: torch.Tensor,
    confidence: torch.Tensor,
    predicted_prefix_only: torch.Tensor,
    predicted_ground_truth: torch.Tensor,
    labels: torch.Tensor,
    from_scratch: bool,
) -> dict[str, Any]:
    """Class agreement of completions (N, K) with the true labels (N,), beside its floor and ceiling.

    The floor is the judge's reading of the visible pixels alone (hidden region blank), the
    ceiling its reading of the true digit: what the completion adds lies between the two.
    ``from_scratch``: everything was hidden, so also report which classes were drawn.
    """
    agree = (predicted == labels[:, None]).float().mean(dim=1)  # (N,)
    floor = (predicted_prefix_only == labels).float()
    ceiling = (predicted_ground_truth == labels).float()
    metrics: dict[str, Any] = {
        "class_agreement": float(agree.mean()),
        "class_agreement_prefix_only": float(floor.mean()),
        "class_agreement_ground_truth": float(ceiling.mean()),
        "per_class": {
            str(d): {
                "class_agreement": float(agree[labels == d].mean()),
                "class_agreement_prefix_only": float(floor[labels == d].mean()),
                "class_agreement_ground_truth": float(ceiling[labels == d].mean()),
            }
            for d in labels.unique().tolist()
        },
    }
    if from_scratch:  # does it draw every class, confidently?
        metrics["generated_class_histogram"] = torch.bincount(predicted.flatten(), minlength=10).tolist()
        metrics["mean_judge_confidence"] = float(confidence.mean())
    return metrics


def judge_completions(
    judge: DigitJudge,
    completed: torch.Tensor,
    targets: torch.Tensor,
    labels: torch.Tensor,
    hidden: torch.Tensor,
) -> dict[str, Any]:
    """The judge's reading of the completions (N, K, 784), of the visible pixels alone and of the
    true digits: ``agreement_metrics`` of the three."""
    n, k = completed.shape[:2]
    probs = classify(judge, completed.reshape(n * k, NUM_PIXELS)).reshape(n, k, 10)
    visible_only = targets.masked_fill(hidden, 0)
    return agreement_metrics(
        probs.argmax(dim=-1),
        probs.max(dim=-1).values,
        classify(judge, visible_only).argmax(dim=1),
        classify(judge, targets).argmax(dim=1),
        labels,
        from_scratch=bool(hidden.all()),
    )
