"""torchrun data-parallel training (rnn_mnist/distributed.py): 2 gloo ranks on the CPU equal one process.

The 2-rank runs are real torchrun launches. A launch costs seconds, so one launch runs a list of
train.py commands in turn (each joins and leaves the process group), and the module's tests read
what it left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import train
from rnn_mnist import distributed
from rnn_mnist.checkpoint import load_checkpoint
from rnn_mnist.distributed import World
from rnn_mnist.errors import RnnMnistError
from rnn_mnist.experiment_lock import ExperimentLock
from rnn_mnist.resume import resume_command
from tests.conftest import REPO, make_mnist_folder, run_main, with_flags

# Runs train.main for each command of a JSON list, in one torchrun launch; each rank records its
# exit codes, so that a test can tell a refused run on every rank from one that trained.
WORKER = textwrap.dedent(
    """
    import json, os, sys
    sys.path.insert(0, sys.argv[1])
    import train
    codes = [train.main(argv) for argv in json.loads(open(sys.argv[2]).read())]
    with open(f"{sys.argv[2]}.rank{os.environ['RANK']}", "w") as out:
        json.dump(codes, out)
    """
)


def base_args(exp_dir: Path, mnist_dir: Path, name: str, *extra: str) -> list[str]:
    # fmt: off
    base = [
        "--exp-name", name, "--exp-dir", str(exp_dir), "--data-dir", str(mnist_dir), "--hidden", "8",
        "--batch-size", "32", "--val-size", "16", "--epochs", "2", "--device", "cpu", "--seed", "3",
    ]
    # fmt: on
    return with_flags(base, *extra)


def torchrun(folder: Path, commands: list[list[str]], ranks: int = 2, **popen) -> subprocess.Popen:
    """Start ``commands`` (train.py argument lists) in one launch of ``ranks`` gloo ranks."""
    worker, spec = folder / "worker.py", folder / f"commands-{time.monotonic_ns()}.json"
    worker.write_text(WORKER)
    spec.write_text(json.dumps(commands))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RNN_MNIST_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
    return subprocess.Popen(
        [*launch, str(worker), str(REPO), str(spec)],
        env=env,
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def finished(process: subprocess.Popen, spec_glob: Path) -> tuple[int, str, list[list[int]]]:
    out, err = process.communicate(timeout=300)
    codes = [json.loads(p.read_text()) for p in sorted(spec_glob.parent.glob(spec_glob.name + ".rank*"))]
    return process.returncode, out + err, codes


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """One 2-rank launch of every command the tests below read, and the 1-process runs they are
    compared with (in-process, one thread)."""
    root = tmp_path_factory.mktemp("ddp")
    mnist_dir = make_mnist_folder(root / "mnist")
    exp = root / "exp"
    args = lambda name, *extra: base_args(exp, mnist_dir, name, *extra)  # noqa: E731
    classify = ("--task", "classify", "--readout", "last")
    odd = ("--val-size", "17", "--batch-size", "78")  # 79 train digits: a last batch of 1 digit
    stochastic = ("--layers", "2", "--dropout", "0.3", "--scheduled-sampling", "linear", "--ss-k", "0.01")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, extra in [
            ("one", ()),
            ("one-classify", classify),
            ("one-odd", odd),
            ("one-lstm", ("--cell", "lstm")),
        ]:
            assert train.main(args(name, *extra)) == 0
        assert train.main(args("one-then-two", "--epochs", "1")) == 0
    finally:
        torch.set_num_threads(threads)
    commands = [
        args("two"),
        args("two-classify", *classify),
        args("two-odd", *odd),
        args("two-lstm", "--cell", "lstm"),
        args("one-then-two", "--resume", "--epochs", "2"),
        args("two-then-one", "--epochs", "1"),
        args("stochastic", *stochastic),
        args("stochastic-resumed", *stochastic, "--epochs", "1"),
        args("stochastic-resumed", "--resume", "--epochs", "2"),
        args("indivisible", "--batch-size", "33"),
    ]
    process = torchrun(root, commands)
    code, output, codes = finished(process, root / "commands-*.json")
    return {"exp": exp, "mnist": mnist_dir, "code": code, "output": output, "codes": codes, "args": args}


def test_every_rank_ran_every_command_and_only_the_indivisible_batch_was_refused(launched):
    assert launched["code"] == 0, launched["output"]  # the worker itself ends well
    assert launched["codes"] == [[0] * 9 + [2], [0] * 9 + [2]], launched["output"]


def test_an_indivisible_global_batch_is_one_line_from_rank_0_before_any_work(launched):
    errors = [line for line in launched["output"].splitlines() if line.startswith("error:")]
    assert errors == [
        "error: --batch-size 33 is the global batch and must divide among the 2 ranks; use a multiple of 2"
    ]
    assert not (launched["exp"] / "indivisible").exists()


def same_training(a: str, b: str, exp: Path) -> None:
    """Two runs' per-step losses within 1e-5, their test figures and final weights within float
    tolerance."""
    one, two = (load_checkpoint(exp / name / "checkpoint.ckpt") for name in (a, b))
    assert [e["epoch"] for e in one["history"]] == [e["epoch"] for e in two["history"]] == [1, 2]
    for first, second in zip(one["history"], two["history"], strict=True):
        assert len(first["batch_losses"]) == len(second["batch_losses"])
        assert torch.allclose(
            torch.tensor(first["batch_losses"]), torch.tensor(second["batch_losses"]), atol=1e-5
        )
        assert first["test_loss"] == pytest.approx(second["test_loss"], abs=1e-5)
    for key, weights in one["model_state"].items():
        assert torch.allclose(weights, two["model_state"][key], atol=1e-5), key


@pytest.mark.parametrize("task", ["", "-classify", "-lstm"])
def test_two_ranks_train_as_one_process_does_on_the_same_global_batch(launched, task):
    same_training(f"one{task}", f"two{task}", launched["exp"])
    two = load_checkpoint(launched["exp"] / f"two{task}" / "checkpoint.ckpt")
    assert {(e["compute"]["world_size"], e["compute"]["backend"]) for e in two["history"]} == {(2, "gloo")}
    one = load_checkpoint(launched["exp"] / f"one{task}" / "checkpoint.ckpt")
    assert {(e["compute"]["world_size"], e["compute"]["backend"]) for e in one["history"]} == {(1, "none")}


def test_a_last_batch_smaller_than_the_world_still_trains_as_one_process(launched):
    """78 of 79 digits a batch: the last batch is one digit, and rank 1 takes part with none."""
    same_training("one-odd", "two-odd", launched["exp"])


def test_only_rank_0_writes(launched):
    exp = launched["exp"]

    def listing(name: str) -> list[str]:  # TensorBoard names its event file by time, host and pid
        paths = [p.relative_to(exp / name).as_posix() for p in (exp / name).rglob("*")]
        return sorted(path.split(".tfevents.")[0] for path in paths)

    assert listing("two") == listing("one")
    assert "tensorboard/events.out" in listing("two") and "best.ckpt" in listing("two")
    log = (exp / "two" / "train.log").read_text().splitlines()
    assert sum(line.startswith("| epoch") for line in log) == 2  # not once per rank
    assert launched["output"].count("/two: GRU-8") == 1


def test_resume_moves_between_world_sizes(launched):
    """1 -> 2 ranks (in the launch) and 2 -> 1 (here) train as an uninterrupted run does: the order
    of digits depends on the seed and the epoch only."""
    exp, args = launched["exp"], launched["args"]
    assert train.main(args("two-then-one", "--resume", "--epochs", "2")) == 0
    same_training("one", "one-then-two", exp)
    same_training("one", "two-then-one", exp)
    log = (exp / "two-then-one" / "train.log").read_text()
    assert "saved by 2 process(es), resumed on 1" in log


def test_a_resumed_run_with_per_rank_randomness_equals_an_uninterrupted_one(launched):
    """Dropout and scheduled-sampling draws differ per rank; their states are saved per rank."""
    straight = load_checkpoint(launched["exp"] / "stochastic" / "checkpoint.ckpt")
    resumed = load_checkpoint(launched["exp"] / "stochastic-resumed" / "checkpoint.ckpt")
    assert len(resumed["rank_rng_states"]) == 1
    for first, second in zip(straight["history"], resumed["history"], strict=True):
        assert first["batch_losses"] == second["batch_losses"]
    for key, weights in straight["model_state"].items():
        assert torch.equal(weights, resumed["model_state"][key]), key


def rank_pids(launcher: int) -> dict[int, int]:
    """The worker processes of a torchrun launch, by rank (their RANK environment variable)."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = dict(
                item.split("=", 1) for item in (proc / "environ").read_text().split("\0") if "=" in item
            )
        except OSError:
            continue
        if env.get("TORCHELASTIC_RUN_ID") and "RANK" in env and _descends_from(int(proc.name), launcher):
            found[int(env["RANK"])] = int(proc.name)
    return found


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            pid = int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
    return False


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the ranks through /proc")
def test_a_killed_rank_ends_the_run_with_one_line_the_checkpoint_intact_and_the_lock_released(
    tmp_path, mnist_dir, capsys
):
    long_run = base_args(tmp_path / "exp", mnist_dir, "killed", "--epochs", "500")
    process = torchrun(tmp_path, [long_run])
    checkpoint = tmp_path / "exp" / "killed" / "checkpoint.ckpt"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (
        checkpoint.exists() and load_checkpoint(checkpoint)["epoch"] >= 1
    ):
        time.sleep(0.2)
    # The lock holds across ranks: a second run on the experiment is refused while they train.
    code, err = run_main(train.main, with_flags(long_run, "--resume"), capsys)
    assert code == 2 and "in use by another" in err, err
    ranks = rank_pids(process.pid)
    assert sorted(ranks) == [0, 1], ranks
    os.kill(ranks[1], signal.SIGKILL)
    code, output, _ = finished(process, tmp_path / "none")
    assert code != 0
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    assert "is intact. Resume with: torchrun --nproc-per-node 2 train.py" in errors[0], errors[0]
    saved = load_checkpoint(checkpoint)
    assert saved["epoch"] >= 1 and len(saved["history"]) == saved["epoch"]
    with ExperimentLock(tmp_path / "exp" / "killed"):  # released: this would raise ExperimentBusy
        pass


def test_world_from_torchruns_environment():
    assert distributed.world_from_env({}) == World()
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert distributed.world_from_env(env) == World(rank=3, size=4, local_rank=1, local_size=2)
    assert distributed.world_from_env({**env, "WORLD_SIZE": "1"}) == World()  # one rank: one process
    with pytest.raises(RnnMnistError, match="whole numbers"):
        distributed.world_from_env({**env, "RANK": "x"})


def test_shards_cover_the_batch_once_and_their_weights_average_to_one():
    batch = torch.arange(7)
    for size in (1, 2, 3, 8):
        shards = [distributed.shard(batch, World(rank, size, rank, size)) for rank in range(size)]
        covered = torch.cat([part for part, weight in shards if weight > 0]).sort().values
        assert torch.equal(covered, batch)
        assert sum(weight for _, weight in shards) == pytest.approx(size)  # DDP divides by size


def test_refused_layouts(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    distributed.check_world(World(), cpu, 33)  # one process: any batch
    with pytest.raises(RnnMnistError, match="multiple of 4"):
        distributed.check_world(World(0, 4, 0, 4), cpu, 30)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    distributed.check_world(World(0, 4, 0, 2), cuda, 32)  # 2 nodes of 2 GPUs
    with pytest.raises(RnnMnistError, match="4 ranks on this machine but 2 GPUs"):
        distributed.check_world(World(0, 4, 0, 4), cuda, 32)
    with pytest.raises(RnnMnistError, match="not MPS"):
        distributed.check_world(World(0, 2, 0, 2), torch.device("mps"), 32)


def test_the_resume_command_of_a_torchrun_run_is_torchruns():
    two = distributed.launch_prefix(World(0, 2, 0, 2))
    assert resume_command("exp", "fast", two) == (
        "torchrun --nproc-per-node 2 train.py --exp-dir exp --exp-name fast --resume"
    )
    assert resume_command("exp", "fast", distributed.launch_prefix(World())).startswith("python train.py")
    nodes = distributed.launch_prefix(World(0, 16, 0, 8))
    assert nodes[:5] == ["torchrun", "--nproc-per-node", "8", "--nnodes", "2"]


def test_threads_per_rank_share_the_cores(monkeypatch):
    monkeypatch.delenv("RNN_MNIST_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert distributed.threads_per_rank(World(0, 4, 0, 4)) == 4
    assert distributed.threads_per_rank(World(0, 64, 0, 32)) == 1
    monkeypatch.setenv("RNN_MNIST_THREADS", "3")
    assert distributed.threads_per_rank(World(0, 4, 0, 4)) == 3
