"""The experiment comparison: curves, labels, binarisation warnings, matching evaluations, bad input."""

from __future__ import annotations

import copy
import json
import os
import pickle
import shutil

import imageio.v3 as iio
import pytest
from conftest import REPO, run_main, tiny_train_args

import evaluate
import train
from rnn_mnist import compare
from rnn_mnist.checkpoint import load_checkpoint, weights_sha256
from rnn_mnist.errors import RnnMnistError

TRAIN_DIGITS = 96 - 16  # the fixtures' training digits less --val-size 16


@pytest.fixture(scope="module")
def exp_dir(tmp_path_factory, mnist_dir):
    """Two tiny one-epoch experiments that differ in hidden size."""
    folder = tmp_path_factory.mktemp("compare") / "experiments"
    for hidden in ("8", "12"):
        args = tiny_train_args(folder, mnist_dir, f"h{hidden}", "--hidden", hidden, "--epochs", "1")
        assert train.main(args) == 0
    return folder


def table_rows(markdown: str) -> dict[str, list[str]]:
    rows = [
        [c.strip() for c in line.split("|")[1:-1]]
        for line in markdown.splitlines()[2:]
        if line.startswith("|")
    ]
    return {row[0]: row for row in rows}


def _metrics(exp_dir) -> dict:
    with open(exp_dir / "h8" / "metrics.pkl", "rb") as f:
        return pickle.load(f)


def _without_seconds(exp_dir) -> dict:
    metrics = _metrics(exp_dir)
    del metrics["history"][0]["seconds"]
    return metrics


def test_training_curve_labels_and_one_epoch_axes(exp_dir, tmp_path):
    experiments = [compare.load_experiment(exp_dir / n, tmp_path) for n in ("h8", "h12")]
    seen, losses = compare.batch_curve(experiments[0])
    assert seen == [32, 64, TRAIN_DIGITS]  # batches of 32, the last one short
    assert losses == experiments[0]["history"][0]["batch_losses"]
    labels = compare.line_labels(experiments)
    assert labels == ["h8 (hidden_size=8)", "h12 (hidden_size=12)"]
    figure = compare.draw(experiments, labels)
    by_digits, by_epoch, by_time = figure.axes[:3]
    assert [line.get_label() for line in by_digits.get_lines()] == labels
    assert list(by_digits.get_lines()[0].get_xdata()) == [s / 1000 for s in seen]
    # A one-epoch run is a point on an axis from 0 past epoch 1, with its value written beside it.
    low, high = by_epoch.get_xlim()
    assert low == 0 and 1 < high <= 2
    assert by_time.get_xlim()[0] == 0
    nll = experiments[0]["history"][0]["test_nll_nats"]
    assert f"{nll:.1f}" in [text.get_text() for text in by_epoch.texts]


def test_smooth_by_hand():
    assert compare.smooth([1.0, 3.0]) == [1.0, 3.0]  # under 40 values: no window to average over
    values = [float(i % 2) for i in range(80)]  # window 2: 0, 1, 0, 1, ... -> 0, 0.5, 0.5, ...
    assert compare.smooth(values) == [0.0] + [0.5] * 79


def test_different_binarisations_are_flagged(exp_dir, mnist_dir, tmp_path, capsys):
    static = tmp_path / "experiments"
    assert train.main(tiny_train_args(static, mnist_dir, "st", "--binarize", "static", "--epochs", "1")) == 0
    capsys.readouterr()
    out = tmp_path / "plots"
    assert (
        compare.main([str(exp_dir / "h8"), str(static / "st"), "--name", "mixed", "--out-dir", str(out)]) == 0
    )
    err = capsys.readouterr().err
    assert "warning:" in err and "h8: threshold-0.1" in err and "st: static" in err
    assert "do not compare" in (out / "compare-mixed.md").read_text()
    assert (
        compare.main([str(exp_dir / "h8"), str(exp_dir / "h12"), "--name", "same", "--out-dir", str(out)])
        == 0
    )
    assert "warning" not in capsys.readouterr().err
    assert "Warning" not in (out / "compare-same.md").read_text()


def test_an_evaluation_is_shown_only_beside_the_checkpoint_it_describes(mnist_dir, tmp_path, capsys):
    """Issue 11, finding 7: stale evaluations were shown after --overwrite, copies under the original name."""
    experiments, evaluations, out = tmp_path / "experiments", tmp_path / "evaluations", tmp_path / "plots"
    assert train.main(tiny_train_args(experiments, mnist_dir, "a", "--epochs", "1")) == 0
    # fmt: off
    assert evaluate.main(["--exp-name", "a", "--exp-dir", str(experiments), "--data-dir", str(mnist_dir),
                          "--out-dir", str(evaluations / "a"), "--num-digits", "4", "--no-gifs"]) == 0
    # fmt: on
    accuracy = f"{json.loads((evaluations / 'a' / 'metrics.json').read_text())['masked_pixel_accuracy']:.4f}"

    def shown(*names: str) -> dict[str, list[str]]:
        capsys.readouterr()
        folders = [str(experiments / n) for n in names]
        assert (
            compare.main([*folders, "--name", "x", "--out-dir", str(out), "--eval-dir", str(evaluations)])
            == 0
        )
        return table_rows((out / "compare-x.md").read_text())

    assert shown("a")["a"][11] == accuracy
    # A copy is named by its folder, and has no evaluation of its own until one is made...
    shutil.copytree(experiments / "a", experiments / "copy")
    rows = shown("a", "copy")
    assert set(rows) == {"a", "copy"} and rows["copy"][11] == "-" and rows["a"][11] == accuracy
    # ... while an evaluation of the same weights, wherever it came from, describes it.
    shutil.copytree(evaluations / "a", evaluations / "copy")
    assert shown("copy")["copy"][11] == accuracy
    # After --overwrite the old evaluation describes another model: not shown, and said why.
    assert (
        train.main(
            tiny_train_args(experiments, mnist_dir, "a", "--epochs", "1", "--overwrite", "--seed", "1")
        )
        == 0
    )
    assert shown("a")["a"][10:] == ["-"] * 5
    assert "describes another checkpoint" in capsys.readouterr().err
    # An evaluation from before checkpoints were recorded in it is not shown either.
    (evaluations / "copy" / "metrics.json").write_text(
        '{"masked_pixel_accuracy": 0.5, "class_agreement": 0.5}'
    )
    assert shown("copy")["copy"][10:] == ["-"] * 5


@pytest.mark.parametrize(
    "case, message",
    [
        ("a file", "is a file"),
        ("config 5", "'config' is missing or not a dict"),
        ("no seconds", "history entry 1 has no number 'seconds'"),
        ("history of numbers", "history entry 1 is not a dict"),
        ("a list", "not a dict"),
        ("name escapes", "--name"),
    ],
)
def test_bad_input_to_compare_is_one_line(exp_dir, tmp_path, capsys, case, message):
    """Issue 11, finding 16: NotADirectoryError, KeyError and AttributeError tracebacks, and a
    --name that wrote outside --out-dir."""
    folder, name = tmp_path / "exp", "x"
    folder.mkdir()
    crafted = {
        "config 5": {"config": 5, "history": []},
        "no seconds": _without_seconds(exp_dir),
        "history of numbers": {**_metrics(exp_dir), "history": [1, 2]},
        "a list": [1, 2, 3],
    }
    if case in crafted:
        (folder / "metrics.pkl").write_bytes(pickle.dumps(crafted[case]))
    elif case == "a file":
        folder = exp_dir / "h8" / "metrics.pkl"
    else:
        folder, name = exp_dir / "h8", "/../../x"
    out = tmp_path / "deep" / "er" / "plots"
    before = set(tmp_path.rglob("*"))
    code, err = run_main(compare.main, [str(folder), "--name", name, "--out-dir", str(out)], capsys)
    assert code == 2 and err.startswith("error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert set(tmp_path.rglob("*")) == before  # nothing written, in --out-dir or outside it


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "metrics.pkl"
    path.write_bytes(pickle.dumps({"config": {}, "history": [Exploit()]}))
    with pytest.raises(RnnMnistError, match="refusing"):
        compare.load_plain_pickle(path)
    assert not marker.exists()
    path.write_bytes(pickle.dumps({"config": {"lr": 1e-3, "milestones": (2, 3)}, "history": [{"epoch": 1}]}))
    assert compare.load_plain_pickle(path)["config"]["milestones"] == (2, 3)


def test_compare_two_tiny_experiments(tmp_path, mnist_dir, capsys):
    exp_dir = tmp_path / "experiments"
    for hidden in ("8", "12"):
        assert train.main(tiny_train_args(exp_dir, mnist_dir, f"h{hidden}", "--hidden", hidden)) == 0
    out, evaluations = tmp_path / "plots", tmp_path / "evaluations"
    (evaluations / "h8").mkdir(parents=True)  # as if evaluate.py had run on h8's checkpoint only
    checkpoint = load_checkpoint(exp_dir / "h8" / "checkpoint.ckpt")
    evaluation = {
        "checkpoint_epoch": checkpoint["epoch"],
        "checkpoint_sha256": weights_sha256(checkpoint["model_state"]),
        "masked_pixel_accuracy": 0.8123,
        "class_agreement": 0.765,
    }
    (evaluations / "h8" / "metrics.json").write_text(json.dumps(evaluation))
    # fmt: off
    code = compare.main([str(exp_dir / "h8"), str(exp_dir / "h12"), "--name", "hidden", "--out-dir", str(out),
                         "--eval-dir", str(evaluations)])
    # fmt: on
    assert code == 0
    assert iio.imread(out / "compare-hidden.png").ndim == 3
    markdown = (out / "compare-hidden.md").read_text()
    assert markdown.strip() in capsys.readouterr().out
    rows = table_rows(markdown)
    assert list(rows) == ["h8", "h12"]
    for name, cells in rows.items():
        with open(exp_dir / name / "metrics.pkl", "rb") as f:
            metrics = pickle.load(f)
        last = metrics["history"][-1]
        assert cells[0] == name and cells[2] == str(metrics["model_config"]["hidden_size"])
        assert cells[4] == f"{metrics['num_parameters']:,}" and cells[5] == str(len(metrics["history"]))
        assert cells[7] == f"{min(h['val_nll_nats'] for h in metrics['history']):.2f}"
        assert cells[8] == f"{last['test_nll_nats']:.2f}" and cells[9] == f"{last['test_bits_per_pixel']:.4f}"
        assert cells[10:] == (["-", "0.8123", "0.765", "-", "-"] if name == "h8" else ["-"] * 5)
    experiments = [compare.load_experiment(exp_dir / n, out) for n in ("h8", "h12")]
    assert compare.differences(experiments) == ["hidden_size=8", "hidden_size=12"]


def test_compare_refuses_a_folder_without_metrics(tmp_path, capsys):
    code = compare.main([str(tmp_path), "--name", "x", "--out-dir", str(tmp_path / "plots")])
    assert code == 2 and "no metrics" in capsys.readouterr().err


def test_compare_reads_shipped_models_from_their_metrics_json(mnist_dir, tmp_path, capsys):
    """Issue 23, finding 12: a pretrained/ folder holds metrics.json and no metrics.pkl; compare
    refused it ("no metrics")."""
    shipped, evaluations, out = REPO / "pretrained", tmp_path / "evaluations", tmp_path / "plots"
    # An evaluation of one of them (on the fixtures' digits), matched to its checkpoint as any other.
    # fmt: off
    assert evaluate.main(["--exp-name", "gru-128", "--exp-dir", str(shipped), "--data-dir", str(mnist_dir),
                          "--out-dir", str(evaluations / "gru-128"), "--num-digits", "2", "--no-gifs",
                          "--no-judge"]) == 0
    # fmt: on
    accuracy = json.loads((evaluations / "gru-128" / "metrics.json").read_text())["masked_pixel_accuracy"]
    capsys.readouterr()
    folders = [str(shipped / "gru-128"), str(shipped / "fast")]
    code = compare.main(
        [*folders, "--name", "shipped", "--out-dir", str(out), "--eval-dir", str(evaluations)]
    )
    assert code == 0, capsys.readouterr().err
    rows = table_rows((out / "compare-shipped.md").read_text())
    for name in ("gru-128", "fast"):
        history = json.loads((shipped / name / "metrics.json").read_text())["history"]
        assert rows[name][5] == str(len(history)) and rows[name][8] == f"{history[-1]['test_nll_nats']:.2f}"
    assert rows["gru-128"][11] == f"{accuracy:.4f}" and rows["fast"][11] == "-"
    assert iio.imread(out / "compare-shipped.png").ndim == 3


def test_the_legend_fits_in_the_picture_when_runs_differ_in_many_flags(exp_dir, tmp_path):
    runs = []
    for i in range(5):  # five runs that differ in a dozen flags each: long labels
        run = copy.deepcopy(compare.load_experiment(exp_dir / ("h8", "h12")[i % 2], tmp_path))
        run["name"] = f"sweep-{i}"
        run["config"].update({f"setting_number_{k}": f"value-{i}-{k}" for k in range(12)})
        runs.append(run)
    labels = compare.line_labels(runs)
    assert min(len(label) for label in labels) > 200
    figure = compare.draw(runs, labels)
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    (legend,) = figure.legends
    box, page = legend.get_window_extent(renderer), figure.bbox
    assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1
    assert len(legend.get_texts()) == 5
    for axes in figure.axes[:3]:  # the panels stay above it, labels and ticks included
        assert axes.get_tightbbox(renderer).y0 >= box.y1 - 1


def _evaluated(exp_dir, evaluations, name: str, **figures) -> dict:
    """An evaluation of experiment ``name``'s current checkpoint, as evaluate.py writes it."""
    checkpoint = load_checkpoint(exp_dir / name / "checkpoint.ckpt")
    evaluation = {
        "checkpoint_epoch": checkpoint["epoch"],
        "checkpoint_sha256": weights_sha256(checkpoint["model_state"]),
        "num_digits": 200,
        "seed": 0,
        "binarization": "threshold-0.1",
        "digits_sha256": "d" * 64,
        "mask": "suffix:284",
        "sampling": "greedy",
        "judge": {"sha256": "j" * 64},
        "masked_pixel_accuracy": 0.9,
        "class_agreement": 0.8,
        "class_agreement_prefix_only": 0.8,
        "class_agreement_ground_truth": 0.99,
        **figures,
    }
    (evaluations / name).mkdir(parents=True, exist_ok=True)
    (evaluations / name / "metrics.json").write_text(json.dumps(evaluation))
    return evaluation


def _compared(exp_dir, evaluations, out, capsys) -> tuple[str, str]:
    """compare.main on h8 and h12: the .md it wrote and what it warned."""
    capsys.readouterr()
    argv = [str(exp_dir / "h8"), str(exp_dir / "h12"), "--name", "x", "--out-dir", str(out)]
    assert compare.main([*argv, "--eval-dir", str(evaluations)]) == 0
    return (out / "compare-x.md").read_text(), capsys.readouterr().err


def test_the_table_shows_class_agreement_beside_its_floor_and_ceiling_and_the_digits(
    exp_dir, tmp_path, capsys
):
    """Issue 21, finding 4: a sweep showed class agreement 0.800 for every model, all of them blank
    completions: the floor (the visible pixels alone), which the table did not show, nor how many
    digits were judged."""
    evaluations, out = tmp_path / "evaluations", tmp_path / "plots"
    _evaluated(exp_dir, evaluations, "h8", num_digits=1000)
    _evaluated(exp_dir, evaluations, "h12", num_digits=1000, class_agreement=0.85)
    markdown, err = _compared(exp_dir, evaluations, out, capsys)
    header = [c.strip() for c in markdown.splitlines()[0].split("|")[1:-1]]
    assert header[10:] == ["eval digits", "masked px acc", "class agreement", "floor", "ceiling"]
    rows = table_rows(markdown)
    assert rows["h8"][10:] == ["1,000", "0.9000", "0.800", "0.800", "0.990"]  # a blank completion's score
    assert rows["h12"][12:] == ["0.850", "0.800", "0.990"]
    assert "Floor: the judge's class agreement on the visible pixels alone" in markdown
    assert "latest evaluation" in markdown and "warning" not in err  # same digits, same settings


def test_experiments_evaluated_on_different_digits_are_warned_about(exp_dir, tmp_path, capsys):
    """Issue 21, finding 4: experiments evaluated on different test subsets got no warning."""
    evaluations, out = tmp_path / "evaluations", tmp_path / "plots"
    _evaluated(exp_dir, evaluations, "h8", num_digits=16, seed=3, digits_sha256="a" * 64)
    _evaluated(exp_dir, evaluations, "h12")
    markdown, err = _compared(exp_dir, evaluations, out, capsys)
    said = "these evaluations completed different test digits"
    assert said in err and "h8: 16 digits, seed 3, threshold-0.1, digits aaaaaaaaaaaa" in err
    assert f"Warning: {said}" in markdown
    # Digits told apart only by their fingerprint (say --indices, or another binarisation's pixels).
    _evaluated(exp_dir, evaluations, "h8", digits_sha256="a" * 64)
    assert said in _compared(exp_dir, evaluations, out, capsys)[1]
    # An evaluation that did not record its digits cannot be told to be on the same ones.
    _evaluated(exp_dir, evaluations, "h8", digits_sha256=None)
    assert "digits unrecorded" in _compared(exp_dir, evaluations, out, capsys)[1]
    # Same digits, another hole or another judge: warned about too.
    _evaluated(exp_dir, evaluations, "h8", mask="center:14", judge={"sha256": "k" * 64})
    markdown, err = _compared(exp_dir, evaluations, out, capsys)
    assert said not in err and "h8: mask=center:14; h12: mask=suffix:284" in err
    assert "different judges gave the class agreements (h8: kkkkkkkkkkkk, h12: jjjjjjjjjjjj)" in markdown
    _evaluated(exp_dir, evaluations, "h8")
    assert "warning" not in _compared(exp_dir, evaluations, out, capsys)[1]


def test_earlier_evaluations_are_kept_and_the_table_says_which_it_shows(mnist_dir, tmp_path, capsys):
    """Issue 21, finding 4: a later 16-digit evaluation silently replaced a 200-digit one."""
    experiments, evaluations, out = tmp_path / "experiments", tmp_path / "evaluations", tmp_path / "plots"
    assert train.main(tiny_train_args(experiments, mnist_dir, "a", "--epochs", "1")) == 0
    common = ["--exp-name", "a", "--exp-dir", str(experiments), "--data-dir", str(mnist_dir),
              "--out-dir", str(evaluations / "a"), "--no-gifs"]  # fmt: skip
    assert evaluate.main([*common, "--num-digits", "6"]) == 0
    assert evaluate.main([*common, "--num-digits", "2", "--no-judge"]) == 0
    capsys.readouterr()
    argv = [str(experiments / "a"), "--name", "x", "--out-dir", str(out), "--eval-dir", str(evaluations)]
    assert compare.main(argv) == 0
    markdown = (out / "compare-x.md").read_text()
    latest = json.loads((evaluations / "a" / "metrics.json").read_text())
    assert (
        table_rows(markdown)["a"][10:]
        == ["2 (latest of 2)", f"{latest['masked_pixel_accuracy']:.4f}"] + ["-"] * 3
    )
    first = json.loads((evaluations / "a" / "evaluations.jsonl").read_text().splitlines()[0])
    assert first["num_digits"] == 6 and 0 <= first["class_agreement_prefix_only"] <= 1
    note = f"a: an earlier evaluation of this checkpoint completed 6 digits ({first['evaluated_at']})"
    assert note in markdown and "the table shows the latest, of 2" in markdown


def test_the_test_nll_cell_carries_its_standard_error_for_benchmark_data():
    last = {"test_nll_nats": 85.123, "test_nll_se": 0.312}
    for method in ("static", "dynamic", "larochelle"):
        assert compare._test_nll_cell({"data_config": {"binarize": method}}, last) == "85.12 ± 0.31"
    assert compare._test_nll_cell({"data_config": {"binarize": "threshold"}}, last) == "85.12"
    older = {"test_nll_nats": 85.123}  # a history written before the error was recorded
    assert compare._test_nll_cell({"data_config": {"binarize": "static"}}, older) == "85.12"
