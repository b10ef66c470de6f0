"""rnn_mnist/masks.py: mask specs and their runs."""

from __future__ import annotations

import pytest
import torch

from rnn_mnist.errors import RnnMnistError
from rnn_mnist.masks import parse_mask, runs


def test_mask_kinds_hide_what_they_say():
    grid = lambda spec: parse_mask(spec).view(28, 28)  # noqa: E731
    assert parse_mask("suffix:284").nonzero().squeeze(1).tolist() == list(range(500, 784))
    assert grid("rows:10-17").sum() == 8 * 28 and grid("rows:10-17")[10:18].all()
    assert grid("cols:3-5").sum() == 3 * 28 and grid("cols:3-5")[:, 3:6].all()
    assert grid("box:2,3,9,20").sum() == 8 * 18 and grid("box:2,3,9,20")[2:10, 3:21].all()
    assert grid("center:14").sum() == 196 and grid("center:14")[7:21, 7:21].all()
    assert grid("left:5")[:, :5].all() and grid("left:5").sum() == 5 * 28
    assert grid("right:3")[:, 25:].all() and grid("right:3").sum() == 3 * 28
    assert parse_mask("random:0.5").sum() == 392
    assert torch.equal(parse_mask("random:0.5", seed=1), parse_mask("random:0.5", seed=1))
    assert not torch.equal(parse_mask("random:0.5", seed=1), parse_mask("random:0.5", seed=2))


@pytest.mark.parametrize(
    "spec",
    ["center", "blob:3", "rows:5", "rows:9-3", "rows:0-28", "box:1,2,3", "center:0", "center:29",
     "random:0", "random:1.5", "random:x", "suffix:0", "suffix:785", "cols:a-b"],
)  # fmt: skip
def test_bad_mask_specs_get_a_one_line_reason(spec):
    with pytest.raises(RnnMnistError) as error:
        parse_mask(spec)
    assert spec in str(error.value) and "\n" not in str(error.value)


def test_runs_split_a_mask_in_pixel_order():
    hidden = torch.zeros(784, dtype=torch.bool)
    hidden[3:5] = hidden[9] = True
    assert runs(hidden) == [(0, 3, False), (3, 5, True), (5, 9, False), (9, 10, True), (10, 784, False)]
