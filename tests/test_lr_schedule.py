"""rnn_mnist/lr_schedule.py: the learning-rate schedules."""

from __future__ import annotations

import itertools

import pytest
import torch

from rnn_mnist import runtime
from rnn_mnist.lr_schedule import LrSchedule


def test_the_step_schedule_is_multisteplr_stepped_once_per_epoch():
    schedule = LrSchedule("step", lr=1.0, epochs=6, batches_per_epoch=5, milestones=(2, 4), gamma=0.5)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    reference = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[2, 4], gamma=0.5)
    for epoch in range(6):
        for batch in range(5):
            assert schedule(epoch * 5 + batch) == pytest.approx(optimizer.param_groups[0]["lr"])
        optimizer.step()
        reference.step()


def test_cosine_warms_up_then_falls_to_its_floor():
    schedule = LrSchedule("cosine", lr=1e-2, epochs=4, batches_per_epoch=100, warmup_batches=10)
    lrs = [schedule(i) for i in range(400)]
    assert lrs[0] == pytest.approx(1e-3, rel=0.02) and lrs[9] == pytest.approx(1e-2, rel=0.02)
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))  # falls from then on
    assert lrs[200] == pytest.approx(1e-2 * (0.01 + 0.99 * 0.5))  # half way: the middle
    assert schedule(400) == pytest.approx(1e-4)  # the floor: 1% of the peak


def test_unknown_precision_and_schedule_are_refused():
    with pytest.raises(ValueError):
        runtime.autocast(torch.device("cpu"), "fp8")
    with pytest.raises(ValueError):
        LrSchedule("linear", lr=1.0, epochs=1, batches_per_epoch=1)
