"""rnn_mnist/scoring.py: completion metrics and class agreement, by hand."""

from __future__ import annotations

import pytest
import torch

from rnn_mnist.masks import suffix_mask
from rnn_mnist.scoring import agreement_metrics, completion_metrics


def test_completion_metrics_by_hand():
    targets = torch.zeros(2, 784, dtype=torch.uint8)
    completed = torch.zeros(2, 1, 784, dtype=torch.uint8)
    completed[0, 0, 780:] = 1  # digit 0: 4 of its 4 hidden pixels wrong
    completed[1, 0, 782] = 1  # digit 1: 1 of 4 wrong
    metrics = completion_metrics(
        completed, targets, torch.tensor([7, 2]), torch.tensor([1.0, 3.0]), hidden=suffix_mask(4)
    )
    assert metrics["masked_pixel_accuracy"] == pytest.approx((0 / 4 + 3 / 4) / 2)
    assert metrics["masked_nll_nats"] == pytest.approx(2.0)
    assert metrics["per_class"]["7"]["masked_pixel_accuracy"] == 0.0
    assert metrics["per_class"]["2"] == {"count": 1, "masked_pixel_accuracy": 0.75, "masked_nll_nats": 3.0}


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
