"""rnn_mnist/visualise.py: GIF triptychs."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np

from rnn_mnist import visualise


def test_gif_frames_size_and_last_frame():
    rng = np.random.default_rng(0)
    target, completed = rng.integers(0, 2, 784), rng.integers(0, 2, 784)
    completed[:500] = target[:500]
    frames = visualise.triptych_frames(completed, target, label=8, mask=284)
    assert 10 < len(frames) <= 100
    width = frames[0].shape[1]
    panel = 28 * visualise.SCALE
    assert visualise.SCALE >= 4 and width == 3 * panel + 4 * visualise.GAP
    # The last frame's middle panel is the whole completion, coloured by origin.
    top, left = visualise.TITLE_HEIGHT, 2 * visualise.GAP + panel
    middle = frames[-1][top : top + panel, left : left + panel]
    expected = visualise.upscale(visualise.colour_pixels(completed, 284))
    assert np.array_equal(middle, expected)
    # The first frame has generated nothing yet.
    assert not np.array_equal(frames[0][top : top + panel, left : left + panel], expected)


def test_gif_file_decodes_loops_and_is_small(tmp_path):
    frames = visualise.triptych_frames(np.ones(784, int), np.ones(784, int), label=1, mask=284)
    path = tmp_path / "1-0.gif"
    visualise.save_gif(path, frames)
    decoded = iio.imread(path, index=None)
    assert decoded.shape[0] == len(frames) and decoded.shape[1:3] == frames[0].shape[:2]
    assert iio.immeta(path)["loop"] == 0
    assert path.stat().st_size < 200_000
