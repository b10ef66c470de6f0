"""The training loop: one loop for every task, per-epoch evaluation, atomic checkpoints, exact resume.

    flags = {...}  # every train.py flag, as plain values
    history = train_experiment(flags)

After every epoch the experiment folder holds a checkpoint and a ``.pkl`` of metrics, both written
atomically, so Ctrl-C or a crash loses at most the epoch in progress. What differs between the
next-pixel and the classify task (model, inputs, loss, metrics, epoch line) is rnn_mnist/tasks.py's;
the device, seeds, RNG states and arithmetic settings are rnn_mnist/runtime.py's.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from rnn_mnist import steps
from rnn_mnist.checkpoint import (
    ExperimentPaths,
    atomic_copy,
    check_writable_folder,
    load_weights,
    save_checkpoint,
    save_metrics,
    to_cpu,
)
from rnn_mnist.config import TrainConfig
from rnn_mnist.data import BinarizedMNIST, DataConfig, load_binarized_mnist, require_labels, test_set_note
from rnn_mnist.distributed import (
    RankStopped,
    World,
    all_reduce_sum,
    broadcast_from_writer,
    check_world,
    data_parallel,
    gather_rng,
    joined,
    launch_prefix,
    peers_watched,
    rank_device,
    rank_seed,
    restore_ranks_rng,
    shard,
    world_from_env,
)
from rnn_mnist.errors import NonFiniteLoss, RnnMnistError, TrainingInterrupted, describe_os_error
from rnn_mnist.experiment_lock import ExperimentLock
from rnn_mnist.lr_schedule import LrSchedule
from rnn_mnist.memory import MemoryNeed, check_fits, training_need
from rnn_mnist.models import NextPixelModel, count_parameters
from rnn_mnist.progress import progress
from rnn_mnist.provenance import code_version
from rnn_mnist.resume import (
    check_run_mode,
    describe_changes,
    load_training_checkpoint,
    resume_command,
    resume_record,
    resumed_flags,
)
from rnn_mnist.runtime import autocast, compute_record, resolve_device, set_seed
from rnn_mnist.tasks import EVAL_BATCH_SIZE, Task, check_task_flags, make_task, pixel_loss
from rnn_mnist.tensorboard import Board, NoBoard, open_board


def config_from_flags(cls: type, flags: dict[str, Any]) -> Any:
    """Build one of the config dataclasses from the flat dict of train.py flags."""
    return cls(**{f.name: flags[f.name] for f in fields(cls) if f.name in flags})


def train_step(
    model: NextPixelModel,
    optimizer: torch.optim.Optimizer,
    pixels: torch.Tensor,
    loss: str = "bce",
    clip: float | None = None,
    labels: torch.Tensor | None = None,
    fed: torch.Tensor | None = None,
    precision: str = "fp32",
) -> torch.Tensor:
    """One update on a batch of float pixels (B, 784); returns the loss tensor.

    The model reads ``fed`` (scheduled sampling mixes its own draws in there), by default the
    true pixels: teacher forcing. It is always scored against the true pixels. ``precision``
    bf16 runs the forward pass under bf16 autocast; the loss is computed in fp32.
    """
    with autocast(pixels.device, precision):
        logits = model.teacher_forced_logits(pixels if fed is None else fed, labels)
    return optimize(model, optimizer, pixel_loss(logits.float(), pixels, loss), clip)


def optimize(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, value: torch.Tensor, clip: float | None
) -> torch.Tensor:
    """Backpropagate ``value``, clip the gradient norm, step; returns the detached value.

    A NaN or infinite loss or gradient raises NonFiniteLoss before the step, so that nothing
    non-finite ever reaches the weights (or, through them, a checkpoint).
    """
    optimizer.zero_grad(set_to_none=True)
    value.backward()
    # Without --clip the norm is still computed, to be checked (max_norm inf leaves the gradient as it is).
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip or math.inf)
    if not bool(torch.isfinite(value.detach()) & torch.isfinite(norm)):  # one sync for both
        loss = value.item()
        what = f"loss became {loss}" if not math.isfinite(loss) else f"gradient norm became {norm.item()}"
        raise NonFiniteLoss(f"the training {what}")
    optimizer.step()
    return value.detach()


class RunLog:
    """Lines for the terminal (above the progress bar) and the experiment's ``train.log``."""

    def __init__(self, path, append: bool) -> None:
        self.path = path
        try:
            self.file = open(path, "a" if append else "w", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise RnnMnistError(f"cannot write {path} ({exc.strerror or exc})") from None

    def __call__(self, line: str) -> None:
        tqdm.write(line)
        try:
            self.file.write(line + "\n")
            self.file.flush()
        except OSError as exc:  # a full disk: name the file
            raise OSError(exc.errno, exc.strerror, str(self.path)) from None

    def close(self) -> None:
        self.file.close()


def train_experiment(
    flags: dict[str, Any], typed: set[str] | None = None, show_progress: bool = True
) -> list[dict[str, Any]]:
    """Train (or resume) the experiment described by train.py's ``flags``; returns its history.

    ``typed`` names the flags the user typed (``cli.typed_flags``); None: every key of ``flags``.
    The run holds the experiment folder's lock throughout: a second run there is refused. Under
    torchrun (rnn_mnist/distributed.py) every rank trains; rank 0 alone holds the lock and writes.
    """
    check_run_mode(flags)
    if not flags.get("resume"):  # a resumed run's task is the saved one: checked once it is known
        check_task_flags(flags, typed)
    paths = ExperimentPaths.of(flags["exp_dir"], flags["exp_name"])
    with joined(world_from_env()) as world, contextlib.ExitStack() as held:

        def prepare() -> _Run:  # rank 0's, with the lock held: everything that could refuse the run
            if flags.get("resume") and not paths.checkpoint.exists():  # before the lock makes a folder
                raise RnnMnistError(
                    f"cannot resume: no checkpoint at {paths.checkpoint}; start it without --resume"
                )
            held.enter_context(ExperimentLock(paths.root))
            check_writable_folder(paths.root, "experiment folder")
            paths.remove_stale_temp_files()  # ours to remove: nobody else writes here while we hold the lock
            run = _resolve_run(paths, flags, typed)
            check_world(world, resolve_device(run.train_cfg.device), run.train_cfg.batch_size)
            return run

        try:
            run = _share_run(world, prepare)
            return _train_locked(run, world, show_progress and world.is_writer)
        except RnnMnistError as exc:
            raise _as_rank(exc, world) from None


def _share_run(world: World, prepare: Callable[[], _Run]) -> _Run:
    """Rank 0 prepares the run and sends it to the other ranks; if it refuses the run, they stop
    without a word (rank 0 says why)."""
    if world.is_writer:
        try:
            run = prepare()
        except BaseException:
            broadcast_from_writer(None, world)
            raise
        return broadcast_from_writer(run, world)
    run = broadcast_from_writer(None, world)
    if run is None:
        raise RankStopped("rank 0 refused the run")
    return run


def _as_rank(exc: RnnMnistError, world: World) -> RnnMnistError:
    """What a rank says of an error: rank 0 says it as one process would; another rank says its
    own errors with its rank, and nothing of a stop that rank 0 reports."""
    if world.is_writer:
        return exc
    if isinstance(exc, (RankStopped, TrainingInterrupted, NonFiniteLoss)):  # rank 0 says these
        exc.quiet = True
        return exc
    return type(exc)(f"rank {world.rank}: {exc}")


@dataclass
class _Run:
    """One run, resolved before any work: its flags (a resumed run's merged with the saved ones), its
    configs and task, and the checkpoint it resumes (None: a fresh run)."""

    paths: ExperimentPaths
    flags: dict[str, Any]
    checkpoint: dict[str, Any] | None
    train_cfg: TrainConfig
    data_cfg: DataConfig
    model_cfg: Any  # the task's: ModelConfig or ClassifierConfig
    task: Task
    resumes: list[dict[str, Any]] = field(default_factory=list)  # resume.resume_record's, this one last


@dataclass
class _Fit:
    """What the fit loop carries from epoch to epoch; on resume, restored from the checkpoint."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator  # shuffling and dynamic binarisation: the same on every rank
    device: torch.device
    world: World
    draws: torch.Generator  # per-step draws (scheduled sampling): the rank's own under torchrun
    loss: Callable[..., Any]  # the task's loss of (inputs, labels, step, draws), averaged over ranks
    history: list[dict[str, Any]] = field(default_factory=list)
    start_epoch: int = 0
    rng_note: str | None = None  # restore_rng's line for the log
    board: Board | NoBoard = field(default_factory=NoBoard)  # the live record (rnn_mnist/tensorboard.py)


def _train_locked(run: _Run, world: World, show_progress: bool) -> list[dict[str, Any]]:
    """Check that the run fits in memory, build or restore it, then fit it epoch by epoch."""
    device = rank_device(world, resolve_device(run.train_cfg.device))
    compute = {**compute_record(device, run.train_cfg.precision), **world.record(device), **code_version()}
    set_seed(run.train_cfg.seed)
    generator = torch.Generator().manual_seed(run.train_cfg.seed)  # shuffling and dynamic binarisation
    data = load_binarized_mnist(run.data_cfg)
    _check_labels(run, data)
    _check_memory(run, data, device)
    fit = _build_or_restore(run, generator, device, world)
    model = getattr(fit.model, "module", fit.model)  # under DistributedDataParallel, the model it wraps
    compute["training_recurrence"] = steps.describe_recurrence(model, device, run.train_cfg.precision)
    log = RunLog(run.paths.log, append=run.checkpoint is not None) if world.is_writer else _silent
    saver = _Saver(run, fit)
    try:
        _announce(run, fit, data, log, saver)
        fit.board = _open_board(run, fit, compute, log)
        for epoch in range(fit.start_epoch + 1, run.train_cfg.epochs + 1):
            _fit_epoch(run, fit, data, epoch, compute, saver, log, show_progress)
    except KeyboardInterrupt:
        raise TrainingInterrupted(f"interrupted; {_kept(run, saver, world)}") from None
    except RankStopped as exc:
        raise RankStopped(f"{exc}; {_kept(run, saver, world)}") from None
    finally:
        fit.board.close()
        log.close()
    return fit.history


def _open_board(run: _Run, fit: _Fit, compute: dict[str, Any], log: RunLog) -> Board | NoBoard:
    """Rank 0's TensorBoard writer, unless --no-tensorboard; it continues from the checkpoint's step."""
    if not (fit.world.is_writer and run.train_cfg.tensorboard):
        return NoBoard()
    facts = {"num_parameters": count_parameters(fit.model)}
    facts.update({key: compute[key] for key in ("git_commit", "git_dirty")})
    return open_board(run.paths.tensorboard, run.flags, facts, _batches_done(fit.history), log)


def _batches_done(history: list[dict[str, Any]]) -> int:
    """The mini-batches of the epochs in ``history``: the step of the next one."""
    return sum(len(h["batch_losses"]) for h in history)


def _kept(run: _Run, saver: _Saver, world: World) -> str:
    """What a stopped run leaves, and the command that continues it (torchrun's, if it was one)."""
    command = resume_command(run.train_cfg.exp_dir, run.train_cfg.exp_name, launch_prefix(world))
    where = f"the checkpoint after epoch {saver.saved_epoch} in {run.paths.root}"
    return f"{where} is intact. Resume with: {command}"


def _silent(line: str = "") -> None:
    """The log of a rank other than 0: it writes nothing."""


_silent.close = lambda: None  # type: ignore[attr-defined]


def _resolve_run(paths: ExperimentPaths, flags: dict[str, Any], typed: set[str] | None) -> _Run:
    """The run's flags and configs: a resumed run's come from its checkpoint, the source of truth."""
    checkpoint = None
    if flags.get("resume"):
        checkpoint = load_training_checkpoint(paths.checkpoint)
        flags = resumed_flags(checkpoint["config"], flags, set(flags) if typed is None else typed)
        check_task_flags(flags, typed)  # the other task's flags typed, even at the saved value
    elif paths.exists() and not flags.get("overwrite"):
        raise RnnMnistError(
            f"experiment {paths.root} already exists; pass --resume to continue it "
            "or --overwrite to start it again"
        )

    train_cfg = config_from_flags(TrainConfig, flags)
    data_cfg = config_from_flags(DataConfig, flags)
    try:
        if checkpoint is not None:  # the saved configs are the source of truth
            data_cfg = DataConfig.from_dict({**checkpoint["data_config"], "data_dir": flags["data_dir"]})
        task = make_task(flags, train_cfg, data_cfg)
        if checkpoint is not None:
            model_cfg = task.model_config_from_dict(checkpoint["model_config"])
        else:
            model_cfg = task.model_config(flags)
    except (TypeError, ValueError) as exc:
        where = f"{paths.checkpoint} holds an invalid config: " if checkpoint is not None else ""
        raise RnnMnistError(f"{where}{exc}") from None
    resumes = [] if checkpoint is None else resume_record(checkpoint, flags)
    return _Run(paths, flags, checkpoint, train_cfg, data_cfg, model_cfg, task, resumes)


def _check_labels(run: _Run, data: BinarizedMNIST) -> None:
    """Refuse, in one line and before any epoch, a run that needs the digits' labels when those of a
    split it reads are unknown (larochelle matches MNIST's labels split by split)."""
    if run.task.name == "classify":
        needed_by = "--task classify"
    elif run.model_cfg.num_classes:
        needed_by = "--condition label"
    else:
        return
    for labels, digits in ((data.train_labels, 1), (data.val_labels, len(data.val)), (data.test_labels, 1)):
        if digits:  # an empty validation split (--val-size 0) is never read
            require_labels(labels, needed_by)


def _check_memory(run: _Run, data: BinarizedMNIST, device: torch.device) -> None:
    """Refuse a run whose training would not fit in memory, before the model exists: an allocation
    that does not fit wakes the OOM killer."""
    model_cfg, train_cfg = run.model_cfg, run.train_cfg

    def need_at(batch_size: int) -> MemoryNeed:
        return training_need(
            run.task.memory_config(model_cfg),
            batch_size,
            train_digits=data.num_train,
            eval_digits=max(len(data.val), len(data.test)),
            device=device,
            eval_batch_size=EVAL_BATCH_SIZE,
            dynamic=run.data_cfg.binarize == "dynamic" and run.task.reads_binarised,
        )

    check_fits(
        need_at,
        train_cfg.batch_size,
        f"training a {model_cfg.cell.upper()}-{model_cfg.hidden_size} x{model_cfg.num_layers} "
        f"at batch {train_cfg.batch_size}",
        f"the model alone does not fit: lower {run.task.size_flags}",
    )


def _build_or_restore(run: _Run, generator: torch.Generator, device: torch.device, world: World) -> _Fit:
    """A fresh model and optimizer, or the checkpoint's, with its RNG states, history and epoch.
    Under torchrun every rank builds the same model (rank 0's seed), then seeds its own streams."""
    seed = run.train_cfg.seed
    model = run.task.build_model(run.model_cfg).to(device)
    if world.rank > 0:
        set_seed(rank_seed(seed, world.rank))
    # One process draws from the shared generator, as it always has; ranks cannot share it.
    draws = generator if world.size == 1 else torch.Generator().manual_seed(rank_seed(seed, world.rank))
    loss = data_parallel(model, run.task.loss, world, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=run.train_cfg.lr)
    fit = _Fit(model, optimizer, generator, device, world, draws, loss)
    checkpoint, path = run.checkpoint, run.paths.checkpoint
    if checkpoint is None:
        if run.flags.get("overwrite") and world.is_writer:
            run.paths.remove_files()  # only now: every check that could refuse the run has passed
        return fit
    load_weights(model, checkpoint["model_state"], path)
    try:
        fit.optimizer.load_state_dict(checkpoint["optimizer_state"])
        states = [checkpoint["rng_state"], *checkpoint.get("rank_rng_states", [])]
        fresh_seed = seed + 7919 * checkpoint["epoch"]
        fit.rng_note = restore_ranks_rng(states, generator, draws, device, world, fresh_seed)
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RnnMnistError(f"{path} does not match its own config ({reason})") from None
    fit.history = list(checkpoint["history"])
    fit.start_epoch = checkpoint["epoch"]
    return fit


class _Saver:
    """Writes the checkpoint and the metrics after an epoch, and remembers the last epoch saved."""

    def __init__(self, run: _Run, fit: _Fit) -> None:
        self.run, self.fit = run, fit
        self.saved_epoch = fit.start_epoch

    def save(self, epoch: int) -> None:
        """Save after ``epoch`` (every rank's RNG states, gathered; rank 0 writes); a failed write
        (a full disk) is one line saying what is still there."""
        fit = self.fit
        states = gather_rng(fit.generator, fit.draws, fit.device, fit.world)
        if not fit.world.is_writer:
            self.saved_epoch = epoch
            return
        try:
            self._write(epoch, states)
        except OSError as exc:
            kept = (
                f"the checkpoint after epoch {self.saved_epoch} in {self.run.paths.root} is intact"
                if self.run.checkpoint is not None or epoch > self.saved_epoch
                else "nothing was saved"
            )
            raise RnnMnistError(f"could not save epoch {epoch}: {describe_os_error(exc)}; {kept}") from None
        self.saved_epoch = epoch

    def _write(self, epoch: int, states: list[dict[str, Any]]) -> None:
        run, fit = self.run, self.fit
        configs = {
            "config": dict(run.flags),
            "model_config": run.model_cfg.to_dict(),
            "data_config": asdict(run.data_cfg),
            **({"resumes": run.resumes} if run.resumes else {}),
        }
        save_checkpoint(
            run.paths.checkpoint,
            {
                **configs,
                "model_state": to_cpu(fit.model.state_dict()),
                "optimizer_state": to_cpu(fit.optimizer.state_dict()),
                "scheduler_state": {},  # the lr is a function of the batch index (lr_schedule.py)
                "epoch": epoch,
                "rng_state": states[0],
                # Ranks 1.. of a torchrun run: their own streams (dropout, scheduled sampling draws).
                **({"rank_rng_states": states[1:]} if len(states) > 1 else {}),
                "history": fit.history,
            },
        )
        best = run.task.best_by.epoch(fit.history)  # None without a validation split: no best.ckpt
        if best == epoch:  # the best epoch so far: its checkpoint is kept beside the last
            atomic_copy(run.paths.checkpoint, run.paths.best)
        save_metrics(
            run.paths,
            {
                **configs,
                "num_parameters": count_parameters(fit.model),
                "best_epoch": best,  # best.ckpt's epoch (None: no validation split)
                "best_by": run.task.best_by.key,
                "history": fit.history,
            },
        )


def _announce(run: _Run, fit: _Fit, data: BinarizedMNIST, log: RunLog, saver: _Saver) -> None:
    """The run's first line in the log; a fresh run is saved first, so that even an interrupted
    first epoch can be resumed."""
    root, model_cfg = run.paths.root, run.model_cfg
    if run.checkpoint is None:
        saver.save(0)
        log(
            f"{root}: {model_cfg.cell.upper()}-{model_cfg.hidden_size} x{model_cfg.num_layers}, "
            f"{count_parameters(fit.model):,} parameters, {data.num_train:,} train"
            f" / {len(data.val):,} val / {len(data.test):,} test digits, "
            f"{run.task.describe_inputs(run.data_cfg)}, task {run.task.name}, device {fit.device}"
        )
        for note in (*data.notes, test_set_note(run.data_cfg) if run.task.name != "classify" else None):
            if note:
                log(f"{root}: {note}")
        batches = math.ceil(data.num_train / run.train_cfg.batch_size)
        if note := run.train_cfg.warmup_note(batches):
            log(f"{root}: {note}")
    elif fit.start_epoch >= run.train_cfg.epochs:
        log(f"{root}: already trained {fit.start_epoch} epochs; raise --epochs to train more")
    else:
        changed = describe_changes(run.resumes[-1]["changed"])
        log(
            f"{root}: resuming after epoch {fit.start_epoch} of {run.train_cfg.epochs}"
            + (changed and f" with {changed}")
        )
        if fit.rng_note:
            log(f"{root}: {fit.rng_note}")


def _fit_epoch(
    run: _Run,
    fit: _Fit,
    data: BinarizedMNIST,
    epoch: int,
    compute: dict[str, Any],
    saver: _Saver,
    log: RunLog,
    show_progress: bool,
) -> None:
    """Train one epoch, add it to the history with the compute record, save, log its line and give
    TensorBoard its points."""
    try:
        batches_done = _batches_done(fit.history)
        entry = _train_one_epoch(fit, data, run.train_cfg, epoch, batches_done, show_progress, run.task)
    except NonFiniteLoss as exc:
        raise NonFiniteLoss(
            f"{exc}; stopped, and kept the checkpoint after epoch {saver.saved_epoch} in "
            f"{run.paths.root}. Try a lower --lr or a --clip."
        ) from None
    fit.history.append({**entry, "compute": compute})
    saver.save(epoch)
    if fit.world.is_writer:
        log(run.task.format_epoch(entry) + run.task.epoch_pictures(fit.model, data, run.paths.samples, epoch))
    last_step = batches_done + len(entry["batch_losses"]) - 1  # the epoch's points sit at its last batch
    fit.board.epoch(entry, last_step, run.paths.samples / f"epoch-{epoch:03d}.png")


@dataclass
class _Tally:
    """What an epoch's mini-batches add up to: their losses, the numbers the task reports for each
    (eps of scheduled sampling) and the sequences seen."""

    losses: list[float] = field(default_factory=list)
    reported: dict[str, list[float]] = field(default_factory=dict)
    seen: int = 0

    def add(self, loss: float, reported: dict[str, float], sequences: int) -> None:
        self.losses.append(loss)
        for key, number in reported.items():
            self.reported.setdefault(key, []).append(number)
        self.seen += sequences

    def means(self) -> dict[str, float]:
        """The epoch's means of the reported numbers and of the loss (``train_loss``)."""
        means = {key: float(np.mean(values)) for key, values in self.reported.items()}
        return {**means, "train_loss": float(np.mean(self.losses))}


def _train_one_epoch(
    fit: _Fit,
    data: BinarizedMNIST,
    cfg: TrainConfig,
    epoch: int,
    batches_done: int,
    show_progress: bool,
    task: Task,
) -> dict[str, Any]:
    """One pass over the training digits, then the task's validation and test metrics: the epoch's
    history entry. ``batches_done``: the mini-batches of earlier epochs (the schedules' clock).
    Every rank draws the same order; each trains on its shard of every batch."""
    started = time.perf_counter()
    inputs = task.epoch_inputs(data, fit.generator)
    order = torch.randperm(len(inputs), generator=fit.generator)
    batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
    lr_at = cfg.lr_at(len(batches))
    tally = _Tally()
    fit.model.train()
    bar = progress(batches, f"epoch {epoch}/{cfg.epochs}", unit="batch", enabled=show_progress)
    for batch_index, idx in enumerate(bar):
        mine, share = shard(idx, fit.world)
        try:
            loss, reported = _train_batch(
                fit,
                task,
                inputs[mine],
                None if data.train_labels is None else data.train_labels[mine],
                share,
                batches_done + batch_index,
                lr_at,
                cfg.clip,
            )
        except NonFiniteLoss as exc:
            bar.close()
            raise NonFiniteLoss(f"{exc} in epoch {epoch}, batch {batch_index + 1}") from None
        tally.add(loss, reported, len(idx))
        fit.board.batch(batches_done + batch_index, loss, fit.optimizer.param_groups[0]["lr"])
        rate = tally.seen / (time.perf_counter() - started)
        bar.set_postfix(loss=f"{loss:.4f}", seq_s=f"{rate:.0f}", refresh=False)
    bar.close()
    train_seconds = time.perf_counter() - started
    named = _stage_names(epoch, cfg.epochs, show_progress)
    entry = {
        "epoch": epoch,
        # The lr the epoch ended at (its last batch's, as the optimizer state holds it): the first
        # batch's would show a warm-up's first step for a whole epoch.
        "end_lr": lr_at(batches_done + len(batches) - 1),
        **tally.means(),
        **task.evaluate(fit.model, data, fit.device, named, fit.world),
        "train_seconds": train_seconds,
        "seconds": time.perf_counter() - started,
        "train_sequences_per_second": tally.seen / train_seconds,
        "batch_losses": tally.losses,
    }
    _check_finite(entry, epoch)
    return entry


def _train_batch(
    fit: _Fit,
    task: Task,
    inputs: torch.Tensor,
    labels: torch.Tensor | None,
    share: float,
    step: int,
    lr_at: LrSchedule,
    clip: float | None,
) -> tuple[float, dict[str, float]]:
    """One update on this rank's shard of a mini-batch at the lr of ``step``, the batch index since
    the start of training (the schedules' clock); returns the whole batch's loss (the ranks' shares,
    summed) and the numbers the task reports for it."""
    for group in fit.optimizer.param_groups:
        group["lr"] = lr_at(step)
    batch = inputs.to(fit.device, non_blocking=True)
    labels = None if labels is None else labels.to(fit.device)  # None: unknown, and not needed
    with peers_watched(fit.world):
        value, reported = fit.loss(batch, labels, step, fit.draws)
        if fit.world.size > 1:  # the share makes DDP's average of gradients the whole batch's
            value = value * share
        loss = optimize(fit.model, fit.optimizer, value, clip).item()
    if fit.world.size > 1:
        loss = all_reduce_sum([loss], fit.world, fit.device)[0] / fit.world.size
    if not math.isfinite(loss):
        raise NonFiniteLoss(f"the training loss became {loss}")
    return loss, reported


def _stage_names(epoch: int, epochs: int, show_progress: bool) -> Callable[[str], str | None]:
    """How the task's evaluation names its progress bars (None: no bar). It takes about a tenth of
    an epoch's time (23 s of 277 at GRU-128): it shows progress too."""

    def named(stage: str) -> str | None:
        return f"epoch {epoch}/{epochs}: {stage}" if show_progress else None

    return named


def _check_finite(entry: dict[str, Any], epoch: int) -> None:
    """The step's own guard keeps the weights finite; this one keeps every number the epoch saves so."""
    for key, value in entry.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise NonFiniteLoss(f"the {key.replace('_', ' ')} became {value} in epoch {epoch}")
