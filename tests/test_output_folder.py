"""rnn_mnist/output_folder.py: an evaluation's folder is replaced whole, under a lock."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import folder_files

from rnn_mnist import output_folder
from rnn_mnist.errors import RnnMnistError
from rnn_mnist.output_folder import OutputFolder, check_replaceable


def _fill(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)


def _beside(target: Path) -> list[str]:
    """What lies beside the target besides it: temporary folders, lock files."""
    return sorted(p.name for p in target.parent.iterdir() if p != target)


@pytest.mark.parametrize("exchange", [True, False], ids=["one exchange", "two renames"])
def test_the_new_folder_replaces_the_old_one_whole(tmp_path, monkeypatch, exchange):
    if not exchange:  # as on a system or file system without renameat2's RENAME_EXCHANGE
        monkeypatch.setattr(output_folder, "_exchange", lambda a, b: False)
    target = tmp_path / "plots" / "exp"
    _fill(target, {"metrics.json": "old", "1-5.gif": "old", "2-7.gif": "old"})
    with OutputFolder(target) as outputs:
        _fill(outputs.staging, {"metrics.json": "new", "1-5.gif": "new"})
        assert folder_files(target)["metrics.json"] == b"old"  # nothing of the new run shows before the swap
        outputs.swap_in()
    assert folder_files(target) == {"metrics.json": b"new", "1-5.gif": b"new"}  # 2-7.gif did not survive
    assert _beside(target) == []


def test_a_run_stopped_before_the_swap_leaves_the_old_folder_and_nothing_else(tmp_path):
    target = tmp_path / "exp"
    _fill(target, {"metrics.json": "old"})
    with pytest.raises(KeyboardInterrupt), OutputFolder(target) as outputs:
        _fill(outputs.staging, {"metrics.json": "new"})
        raise KeyboardInterrupt
    assert folder_files(target) == {"metrics.json": b"old"} and _beside(target) == []


def test_what_a_killed_evaluation_left_is_undone_by_the_next_one(tmp_path):
    """A SIGKILL between the two renames: the old folder set aside, the new one beside it, no target.
    The next evaluation puts the old one back before it starts, and removes the rest."""
    target = tmp_path / "exp"
    _fill(tmp_path / ".exp.old-99999", {"metrics.json": "old"})
    _fill(tmp_path / ".exp.tmp-99999", {"metrics.json": "new, complete or not"})
    _fill(tmp_path / ".exp.tmp-5.tmp-6", {"kept": "another folder's, not ours"})
    with OutputFolder(target):
        assert folder_files(target) == {"metrics.json": b"old"}
    assert folder_files(target) == {"metrics.json": b"old"}
    assert _beside(target) == [".exp.tmp-5.tmp-6"]


def test_a_second_evaluation_is_refused_while_one_holds_the_folder(tmp_path):
    target = tmp_path / "exp"
    with OutputFolder(target), pytest.raises(RnnMnistError) as refused:
        OutputFolder(target).__enter__()
    assert f"output folder {target} is in use by another evaluation (pid {os.getpid()}" in str(refused.value)
    assert not target.exists() and _beside(target) == []


def test_only_a_folder_of_evaluation_outputs_is_replaced(tmp_path):
    ours = {"metrics.json", "completions.npz", "completions.png", "3-17.gif", "3-17-2.gif", "misread.png"}
    _fill(tmp_path / "ours", dict.fromkeys(ours | {".metrics.json.a1b2c3.tmp"}, ""))
    check_replaceable(tmp_path / "ours", "--out-dir")
    check_replaceable(tmp_path / "new" / "folder", "--out-dir")
    _fill(tmp_path / "mixed", {"metrics.json": "", "notes.txt": "", "holiday.gif": ""})
    (tmp_path / "mixed" / "sub").mkdir()
    foreign = r"holds files evaluate.py does not write \(holiday.gif, notes.txt, sub/\)"
    with pytest.raises(RnnMnistError, match=foreign):
        check_replaceable(tmp_path / "mixed", "--out-dir")
    with pytest.raises(RnnMnistError, match="root of a file system"):
        check_replaceable(Path("/"), "--out-dir")


def _evaluate(target: Path, files: dict[str, str], metrics: dict) -> None:
    with OutputFolder(target) as outputs:
        _fill(outputs.staging, {**files, "metrics.json": json.dumps(metrics)})
        outputs.keep_log(metrics)
        outputs.swap_in()


def test_the_log_outlives_every_evaluation_and_nothing_else_does(tmp_path):
    """Issue 21, findings 4 and 5: plots/<name>/ kept 200 GIFs of an earlier run beside a new
    metrics.json, and nothing at all of the earlier run's figures."""
    target = tmp_path / "exp"
    # An evaluation from before the log: its metrics.json is the log's first line.
    _fill(
        target, {"metrics.json": json.dumps({"num_digits": 200, "per_class": {"3": {}}}), "3-17.gif": "old"}
    )
    _evaluate(target, {"1-5.gif": "new"}, {"num_digits": 16, "per_class": {}, "nll": float("nan")})
    assert sorted(p.name for p in target.iterdir()) == [
        "1-5.gif",
        output_folder.EVALUATIONS_LOG,
        "metrics.json",
    ]
    assert output_folder.read_log(target) == [
        {"num_digits": 200},
        {"num_digits": 16, "nll": None},
    ]  # strict JSON
    with (target / output_folder.EVALUATIONS_LOG).open("a") as log:
        log.write("{cut short")  # by hand, say: passed over when read, kept when carried
    check_replaceable(target, "--out-dir")  # the log is evaluate.py's own
    _evaluate(target, {}, {"num_digits": 2, "misread": [1, 2], "confusion_matrix": [[1]]})
    assert output_folder.read_log(target) == [
        {"num_digits": 200},
        {"num_digits": 16, "nll": None},
        {"num_digits": 2},
    ]
    assert "{cut short\n" in (target / output_folder.EVALUATIONS_LOG).read_text()
    assert sorted(p.name for p in target.iterdir()) == [output_folder.EVALUATIONS_LOG, "metrics.json"]


def test_a_run_stopped_before_the_swap_adds_no_line_to_the_log(tmp_path):
    target = tmp_path / "exp"
    _evaluate(target, {}, {"num_digits": 4})
    with pytest.raises(KeyboardInterrupt), OutputFolder(target) as outputs:
        outputs.keep_log({"num_digits": 8})
        raise KeyboardInterrupt
    assert (
        output_folder.read_log(target) == [{"num_digits": 4}]
        and output_folder.read_log(tmp_path / "none") == []
    )
