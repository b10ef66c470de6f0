"""rnn_mnist/models.py: the next-pixel model (causal, steppable, rebuilt from its config), the classifier."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rnn_mnist.models import (
    ClassifierConfig,
    ModelConfig,
    NextPixelModel,
    SequenceClassifier,
    check_reading_order,
    pixel_permutation,
)
from rnn_mnist.runtime import autocast


def _classifier(
    readout: str = "last", cell: str = "gru", permutation_seed: int | None = None, layers: int = 1
):
    torch.manual_seed(0)
    config = ClassifierConfig(
        cell=cell, hidden_size=8, num_layers=layers, readout=readout, permutation_seed=permutation_seed
    )
    return SequenceClassifier(config).eval()


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 784, generator=torch.Generator().manual_seed(seed))


OLD_MODEL = Path(__file__).parent / "data" / "pre-fast-gru-model.pt"


CONFIGS = [
    *(
        ModelConfig(cell=cell, hidden_size=16, num_layers=layers)
        for cell in ("gru", "lstm", "rnn")
        for layers in (1, 2)
    ),
    ModelConfig(hidden_size=16, context=True, position=True),
    ModelConfig(cell="lstm", hidden_size=16, context=True, num_classes=10),
    ModelConfig(hidden_size=16, num_layers=2, context=True, position=True, num_classes=10),
    ModelConfig(hidden_size=16, context=True, context_rows=2, context_width=5, head_hidden=8),
]


LABELS = torch.tensor([3, 0, 9])


def _id(config: ModelConfig) -> str:
    extras = [name for name in ("context", "position") if getattr(config, name)]
    extras += [f"{config.context_rows}x{config.context_width}"] if config.context else []
    extras += ["label"] if config.num_classes else []
    return "-".join([config.cell, str(config.num_layers), *extras])


def _model(config: ModelConfig) -> NextPixelModel:
    torch.manual_seed(0)
    return NextPixelModel(config).eval()


def _labels(config: ModelConfig, n: int = 3) -> torch.Tensor | None:
    return LABELS[:n] if config.num_classes else None


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
@pytest.mark.parametrize("permutation_seed", [None, 3])
def test_changing_the_pixel_read_last_changes_the_logits(cell, permutation_seed):
    model = _classifier(cell=cell, permutation_seed=permutation_seed)
    images = _images(2)
    last = int(model.reading_order[-1])  # 783 in raster order
    changed = images.clone()
    changed[:, last] = 1 - changed[:, last]
    with torch.no_grad():
        assert not torch.allclose(model(images), model(changed))


def test_the_logits_depend_on_every_pixel():
    # With the mean readout every state reaches the head, so no gradient can vanish on the way:
    # each of the 784 pixels must move the logits.
    model = _classifier(readout="mean", permutation_seed=1)
    images = _images(1).requires_grad_()
    model(images).sum().backward()
    assert (images.grad != 0).all()


def test_the_logits_depend_on_nothing_but_the_image():
    # Alone or among other digits, first or last in the batch, now or later: the same logits.
    model = _classifier(layers=2)
    images = _images(5)
    with torch.no_grad():
        together = model(images)
        alone = torch.cat([model(images[i : i + 1]) for i in range(5)])
        reversed_batch = model(images.flip(0)).flip(0)
        again = model(images)
    torch.testing.assert_close(alone, together, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(reversed_batch, together, rtol=1e-5, atol=1e-6)
    assert torch.equal(again, together)


@pytest.mark.parametrize("readout", ["last", "mean"])
def test_fast_gru_path_equals_nn_gru_and_the_last_pixel_curve_is_the_output(readout):
    model = _classifier(readout=readout, layers=2)
    images = _images(3)
    with torch.no_grad():
        fast = model(images)
        every = model.logits_after_each_pixel(images)
        model.fast_gru = False
        reference = model(images)
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-5)
    assert every.shape == (3, 784, 10)
    torch.testing.assert_close(every[:, -1], fast, rtol=1e-4, atol=1e-5)


def test_permutation_reorders_the_reading():
    images = _images(2)
    plain, permuted = _classifier(), _classifier(permutation_seed=5)
    permuted.load_state_dict({**plain.state_dict(), "reading_order": permuted.reading_order})
    order = pixel_permutation(5)
    assert torch.equal(permuted.reading_order, order) and not torch.equal(order, torch.arange(784))
    with torch.no_grad():  # the permuted model on an image = the plain one on the permuted image
        torch.testing.assert_close(permuted(images), plain(images[:, order]))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("config", CONFIGS, ids=_id)
def test_changing_pixel_t_changes_no_prediction_up_to_t(config, precision):
    model, labels = _model(config), _labels(config)
    pixels = torch.bernoulli(torch.full((3, 784), 0.3), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), autocast(pixels.device, precision):
        before = model.teacher_forced_logits(pixels, labels)
        for t in (0, 27, 100, 500, 782):
            flipped = pixels.clone()
            flipped[:, t] = 1 - flipped[:, t]
            after = model.teacher_forced_logits(flipped, labels)
            assert torch.equal(after[:, : t + 1], before[:, : t + 1]), f"pixel {t} leaked backwards"
            assert not torch.allclose(after[:, t + 1], before[:, t + 1]), f"pixel {t} not used"


@pytest.mark.parametrize("config", CONFIGS, ids=_id)
def test_stepping_one_pixel_at_a_time_equals_the_sequence_pass(config):
    model, labels = _model(config), _labels(config, 2)
    pixels = torch.bernoulli(torch.full((2, 90), 0.4), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model.teacher_forced_logits(pixels, labels)
        prefix = 45  # prime with a prefix, then step: the way a rollout uses the model
        logits, state = model(pixels, 0, prefix, labels)
        read_state = model.read(pixels, prefix, labels)  # chunked, state only
        torch.testing.assert_close(read_state, state, rtol=1e-5, atol=1e-6)  # tensor or (h, c)
        stepped = [logits]
        for t in range(prefix, 90):
            logit, state = model.step(pixels, t, state, labels)
            stepped.append(logit.unsqueeze(1))
    torch.testing.assert_close(torch.cat(stepped, dim=1), full, rtol=1e-5, atol=1e-5)


def test_returns_logits_and_state_shapes():
    model = _model(ModelConfig(cell="lstm", hidden_size=8, num_layers=2))
    logits, (h, c) = model(torch.zeros(5, 784), 0, 784)
    assert logits.shape == (5, 784)
    assert h.shape == c.shape == (2, 5, 8)


def test_context_features_are_the_pixels_above_and_only_inside_the_image():
    model = _model(ModelConfig(hidden_size=4, context=True))
    canvas = torch.zeros(1, 784)
    canvas[0, 5 * 28 + 10] = 1  # row 5, column 10
    features = model.features(canvas, 0, 784)[0]  # (784, 4): prev, above-left, above, above-right
    assert features[6 * 28 + 11, 1] == 1 and features[6 * 28 + 10, 2] == 1 and features[6 * 28 + 9, 3] == 1
    assert features[:, 1:].sum() == 3
    edge = torch.zeros(1, 784)
    edge[0, 5 * 28 + 27] = 1  # the last column: above-left of row 6 column 0 would wrap around
    assert model.features(edge, 0, 784)[0, :, 1:].sum() == 2


def test_a_wider_context_reads_the_rows_above_row_by_row_left_to_right():
    model = _model(ModelConfig(hidden_size=4, context=True, context_rows=2, context_width=5))
    canvas = torch.zeros(1, 784)
    canvas[0, 5 * 28 + 10] = 1  # row 5, column 10
    features = model.features(canvas, 0, 784)[0]  # (784, 1 + 2 * 5)
    assert features.shape == (784, 11)
    # Pixel (row 6, column 12) sees it one row up, two columns left: the first of its 5.
    assert features[6 * 28 + 12, 1] == 1 and features[6 * 28 + 8, 5] == 1
    assert features[7 * 28 + 10, 8] == 1  # two rows up, same column: the middle of the second row
    assert features[:, 1:].sum() == 10  # seen by exactly 2 x 5 later pixels
    edge = torch.zeros(1, 784)
    edge[0, 5 * 28 + 27] = 1  # the last column must not wrap around to the next row's start
    assert model.features(edge, 0, 784)[0, :, 1:].sum() == 6  # 3 of 5 columns exist there, 2 rows


def test_first_pixel_uses_the_start_value():
    model = _model(ModelConfig(hidden_size=8))
    pixels = torch.zeros(1, 784)
    before = model.teacher_forced_logits(pixels)[0, 0].item()
    with torch.no_grad():
        model.start_pixel.fill_(3.0)
    assert model.teacher_forced_logits(pixels)[0, 0].item() != before


def test_label_changes_the_output_distribution_and_is_required():
    model = _model(ModelConfig(hidden_size=8, num_classes=10))
    pixels = torch.zeros(2, 784)
    with torch.no_grad():
        a = model.teacher_forced_logits(pixels, torch.tensor([1, 1]))
        b = model.teacher_forced_logits(pixels, torch.tensor([1, 7]))
    assert torch.equal(a[0], b[0]) and not torch.allclose(a[1], b[1])
    with pytest.raises(ValueError, match="labels"):
        model.teacher_forced_logits(pixels)


def test_config_round_trip_rebuilds_identical_model():
    config = ModelConfig(cell="lstm", hidden_size=12, num_layers=2, dropout=0.1, context=True, num_classes=10)
    model = _model(config)
    rebuilt = NextPixelModel(ModelConfig.from_dict(config.to_dict()))
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    pixels, labels = torch.ones(2, 784), torch.tensor([4, 2])
    assert torch.equal(
        rebuilt.teacher_forced_logits(pixels, labels), model.teacher_forced_logits(pixels, labels)
    )


@pytest.mark.parametrize(
    "bad",
    [
        dict(cell="transformer"),
        dict(hidden_size=0),
        dict(num_layers=0),
        dict(dropout=1.0),
        dict(num_classes=-1),
        dict(context=True, context_width=4),
        dict(context=True, context_rows=0),
    ],
)
def test_impossible_configs_are_refused(bad):
    with pytest.raises(ValueError):
        ModelConfig(**bad)


def test_a_model_saved_before_the_fast_gru_gives_the_same_logits():
    """tests/data holds a GRU (2 layers, context, position, label) and its logits, both written by
    the code before the fast GRU (rnn_mnist/kernels/gru.py) existed; its state dict loads unchanged
    and runs on either path."""
    saved = torch.load(OLD_MODEL, weights_only=True)
    model = NextPixelModel(ModelConfig.from_dict(saved["model_config"])).eval()
    model.load_state_dict(saved["model_state"])
    pixels = saved["pixels"].float()
    for fast in (True, False):
        model.fast_gru = fast
        with torch.no_grad():
            logits = model.teacher_forced_logits(pixels, saved["labels"])
        torch.testing.assert_close(logits, saved["logits"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", CONFIGS, ids=_id)
def test_reading_a_prefix_shares_blank_starts_without_changing_the_state(config):
    """read() lets digits join at their first ink from a blank canvas's state; the result must be
    the state of reading every digit from pixel 0."""
    model, labels = _model(config), _labels(config, 3)
    generator = torch.Generator().manual_seed(6)
    canvas = torch.bernoulli(torch.full((3, 300), 0.3), generator=generator)
    canvas[0, :150] = 0  # first ink after a blank start
    canvas[1, :] = 0  # all blank
    canvas[2, 0] = 1  # ink at once
    with torch.no_grad():
        shared = model.read(canvas, 300, labels)
        state = None
        for start in range(0, 300, 8):  # every digit from pixel 0, no sharing
            _, state = model(canvas, start, min(start + 8, 300), labels, state, logits=False)
    torch.testing.assert_close(shared, state, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("config", CONFIGS, ids=_id)
def test_the_rollout_stepper_equals_step(config):
    """stepper() prepares the static parts once; every step must still equal step()."""
    model, labels = _model(config), _labels(config, 2)
    pixels = torch.bernoulli(torch.full((2, 784), 0.4), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        step = model.stepper(labels, 2, pixels.device)
        state_a = state_b = model.read(pixels, 400, labels)
        for t in range(400, 420):
            logit_a, state_a = model.step(pixels, t, state_a, labels)
            logit_b, state_b = step(pixels, t, state_b)
            torch.testing.assert_close(logit_b, logit_a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state_b, state_a, rtol=1e-5, atol=1e-5)


def _tampered_orders() -> dict[str, torch.Tensor]:
    """Reading orders a hand-edited checkpoint could hold, none of them a permutation of 0..783."""
    out_of_range, repeated, negative = (pixel_permutation(5) for _ in range(3))
    out_of_range[0] = 999
    repeated[1] = repeated[0]
    negative[0] = -1
    return {
        "index 999": out_of_range,
        "a repeated index": repeated,
        "a negative index": negative,
        "floats": pixel_permutation(5).float(),
        "783 indices": pixel_permutation(5)[:783],
    }


@pytest.mark.parametrize("case", list(_tampered_orders()))
def test_a_reading_order_that_is_not_a_permutation_is_refused_on_load(case):
    """Issue 23, finding 8: index 999 crashed mid-read; repeated and negative indices were accepted."""
    model = _classifier(permutation_seed=5)
    state = {**model.state_dict(), "reading_order": _tampered_orders()[case]}
    with pytest.raises(ValueError, match="reading_order"):
        model.load_state_dict(state)
    assert torch.equal(model.reading_order, pixel_permutation(5))  # the model is left as it was


def test_a_permuted_reading_order_without_a_permutation_seed_is_refused():
    raster = _classifier()
    with pytest.raises(ValueError, match="raster order"):
        raster.load_state_dict({**raster.state_dict(), "reading_order": pixel_permutation(5)})
    check_reading_order(torch.arange(784), None)
    # With a seed the stored order is the truth (another torch may draw another permutation): any
    # permutation loads.
    check_reading_order(pixel_permutation(6), 5)


@pytest.mark.parametrize(
    "config",
    [ModelConfig(hidden_size=8), ModelConfig(hidden_size=8, context=True, position=True, num_classes=10)],
    ids=["plain", "context-position-label"],
)
@pytest.mark.parametrize("grad", [True, False], ids=["training", "no-grad"])
def test_calling_the_model_on_digits_gives_every_pixels_logit(config, grad):
    """Issue 21, finding 1: ``model(x)`` failed (forward() wanted start and end); it is now the
    teacher-forced logits of the whole sequence, and uint8 digits are read as the floats they hold."""
    torch.manual_seed(0)
    model = NextPixelModel(config).eval()
    digits = torch.randint(0, 2, (3, 784), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    labels = torch.tensor([1, 5, 9]) if config.num_classes else None
    with torch.set_grad_enabled(grad):
        logits, state = model(digits, labels=labels)
        expected = model.teacher_forced_logits(digits.float(), labels)
    assert logits.shape == (3, 784) and state is not None
    torch.testing.assert_close(logits, expected)
