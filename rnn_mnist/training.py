"""The training loop: one loop for every task, per-epoch evaluation, atomic checkpoints, exact resume.

    flags = {...}  # every train.py flag, as plain values
    history = train_experiment(flags)

After every epoch the experiment folder holds a checkpoint and a ``.pkl`` of metrics, both written
atomically, so Ctrl-C or a crash loses at most the epoch in progress. What differs between the
next-pixel and the classify task (model, inputs, loss, metrics, epoch line) is rnn_mnist/tasks.py's.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, fields
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from rnn_mnist.checkpoint import (
    ExperimentPaths,
    check_writable_folder,
    load_weights,
    save_checkpoint,
    save_metrics,
    to_cpu,
)
from rnn_mnist.compute import autocast, configure_cpu_math
from rnn_mnist.config import TrainConfig
from rnn_mnist.data import DataConfig, load_binarized_mnist
from rnn_mnist.errors import NonFiniteLoss, RnnMnistError, TrainingInterrupted, describe_os_error
from rnn_mnist.experiment_lock import ExperimentLock
from rnn_mnist.memory import MemoryNeed, check_fits, training_need
from rnn_mnist.models import NextPixelModel, count_parameters
from rnn_mnist.progress import progress
from rnn_mnist.resume import check_run_mode, load_training_checkpoint, resume_command, resumed_flags
from rnn_mnist.tasks import (  # noqa: F401 (evaluate_nll, pixel_loss: used through this module too)
    EVAL_BATCH_SIZE,
    Task,
    check_task_flags,
    evaluate_nll,
    make_task,
    pixel_loss,
)


def config_from_flags(cls: type, flags: dict[str, Any]) -> Any:
    """Build one of the config dataclasses from the flat dict of train.py flags."""
    return cls(**{f.name: flags[f.name] for f in fields(cls) if f.name in flags})


def set_seed(seed: int) -> None:
    """Seed every generator the toolkit touches: Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then the CPU; an unavailable explicit choice is an error."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        raise RnnMnistError(f"--device {name} was asked for, but this machine has no {name.upper()}")
    return torch.device(name)


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


def capture_rng(generator: torch.Generator, device: torch.device) -> dict[str, Any]:
    """Every RNG state a resumed run needs, as plain values and CPU tensors."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_name, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss, np_gauss),
        "torch": torch.get_rng_state(),
        "shuffle": generator.get_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator, device: torch.device) -> str | None:
    """Put back what ``capture_rng`` saved. Returns a line for the log when the run was saved with
    more GPUs than this machine has: the states of the GPUs present are restored, the rest dropped
    (``torch.cuda.set_rng_state_all`` would raise an IndexError instead)."""
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    generator.set_state(state["shuffle"])
    if device.type != "cuda" or "cuda" not in state:
        return None
    saved, present = len(state["cuda"]), torch.cuda.device_count()
    for index, gpu_state in enumerate(state["cuda"][:present]):
        torch.cuda.set_rng_state(gpu_state, index)
    if saved <= present:
        return None
    return f"saved with {saved} GPUs, resumed on {present}: RNG states of GPUs {present}..{saved - 1} dropped"


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
    The run holds the experiment folder's lock throughout: a second run there is refused.
    """
    check_run_mode(flags)
    if not flags.get("resume"):  # a resumed run's task is the saved one: checked once it is known
        check_task_flags(flags)
    paths = ExperimentPaths.of(flags["exp_dir"], flags["exp_name"])
    if flags.get("resume") and not paths.checkpoint.exists():  # checked before the lock makes a folder
        raise RnnMnistError(f"cannot resume: no checkpoint at {paths.checkpoint}; start it without --resume")
    with ExperimentLock(paths.root):
        # Everything that could refuse the run comes before its work, not after an epoch of it.
        check_writable_folder(paths.root, "experiment folder")
        paths.remove_stale_temp_files()  # ours to remove: nobody else writes here while we hold the lock
        return _train_locked(paths, flags, set(flags) if typed is None else typed, show_progress)


def _train_locked(
    paths: ExperimentPaths, flags: dict[str, Any], typed: set[str], show_progress: bool
) -> list[dict[str, Any]]:
    checkpoint = None
    if flags.get("resume"):
        checkpoint = load_training_checkpoint(paths.checkpoint)
        flags = resumed_flags(checkpoint["config"], flags, typed)
    elif paths.exists() and not flags.get("overwrite"):
        raise RnnMnistError(
            f"experiment {paths.root} already exists; pass --resume to continue it "
            "or --overwrite to start it again"
        )

    train_cfg = config_from_flags(TrainConfig, flags)
    data_cfg = config_from_flags(DataConfig, flags)
    task = make_task(flags, train_cfg)
    try:
        if checkpoint is not None:  # the saved configs are the source of truth
            model_cfg = task.model_config_from_dict(checkpoint["model_config"])
            data_cfg = DataConfig.from_dict({**checkpoint["data_config"], "data_dir": flags["data_dir"]})
        else:
            model_cfg = task.model_config(flags)
    except (TypeError, ValueError) as exc:
        where = f"{paths.checkpoint} holds an invalid config: " if checkpoint is not None else ""
        raise RnnMnistError(f"{where}{exc}") from None

    device = resolve_device(train_cfg.device)
    if train_cfg.precision == "bf16" and device.type == "mps":
        raise RnnMnistError("--precision bf16 runs on the CPU and CUDA; use fp32 on MPS")
    compute = {**configure_cpu_math(), "precision": train_cfg.precision, "device": str(device)}
    set_seed(train_cfg.seed)
    generator = torch.Generator().manual_seed(train_cfg.seed)  # shuffling and dynamic binarisation
    data = load_binarized_mnist(data_cfg)

    def need_at(batch_size: int) -> MemoryNeed:
        return training_need(
            task.memory_config(model_cfg),
            batch_size,
            train_digits=len(data.train_grey),
            eval_digits=max(len(data.val), len(data.test)),
            device=device,
            eval_batch_size=EVAL_BATCH_SIZE,
            dynamic=data_cfg.binarize == "dynamic" and task.reads_binarised,
        )

    check_fits(  # before the model exists: an allocation that does not fit wakes the OOM killer
        need_at,
        train_cfg.batch_size,
        f"training a {model_cfg.cell.upper()}-{model_cfg.hidden_size} x{model_cfg.num_layers} "
        f"at batch {train_cfg.batch_size}",
        f"the model alone does not fit: lower {task.size_flags}",
    )
    model = task.build_model(model_cfg).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=train_cfg.lr)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    rng_note = None
    if checkpoint is not None:
        load_weights(model, checkpoint["model_state"], paths.checkpoint)
        try:
            optimizer.load_state_dict(checkpoint["optimizer_state"])
            rng_note = restore_rng(checkpoint["rng_state"], generator, device)
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RnnMnistError(f"{paths.checkpoint} does not match its own config ({reason})") from None
        history = list(checkpoint["history"])
        start_epoch = checkpoint["epoch"]
    elif flags.get("overwrite"):
        paths.remove_files()  # only now: every check that could refuse the run has passed

    def save(epoch: int) -> None:
        configs = {
            "config": dict(flags),
            "model_config": model_cfg.to_dict(),
            "data_config": asdict(data_cfg),
        }
        save_checkpoint(
            paths.checkpoint,
            {
                **configs,
                "model_state": to_cpu(model.state_dict()),
                "optimizer_state": to_cpu(optimizer.state_dict()),
                "scheduler_state": {},  # the lr is a function of the batch index (lr_schedule.py)
                "epoch": epoch,
                "rng_state": capture_rng(generator, device),
                "history": history,
            },
        )
        save_metrics(paths, {**configs, "num_parameters": count_parameters(model), "history": history})

    log = RunLog(paths.log, append=checkpoint is not None)
    saved_epoch = start_epoch

    def save_or_explain(epoch: int) -> None:
        """``save``; a failed write (a full disk) is one line saying what is still there."""
        try:
            save(epoch)
        except OSError as exc:
            kept = (
                f"the checkpoint after epoch {saved_epoch} in {paths.root} is intact"
                if checkpoint is not None or epoch > saved_epoch
                else "nothing was saved"
            )
            raise RnnMnistError(f"could not save epoch {epoch}: {describe_os_error(exc)}; {kept}") from None

    try:
        if checkpoint is None:
            save_or_explain(0)  # so that even an interrupted first epoch can be resumed
            log(
                f"{paths.root}: {model_cfg.cell.upper()}-{model_cfg.hidden_size} x{model_cfg.num_layers}, "
                f"{count_parameters(model):,} parameters, {len(data.train_grey):,} train"
                f" / {len(data.val):,} val / {len(data.test):,} test digits, "
                f"{task.describe_inputs(data_cfg)}, task {task.name}, device {device}"
            )
            if note := train_cfg.warmup_note(math.ceil(len(data.train_grey) / train_cfg.batch_size)):
                log(f"{paths.root}: {note}")
        elif start_epoch >= train_cfg.epochs:
            log(f"{paths.root}: already trained {start_epoch} epochs; raise --epochs to train more")
        else:
            log(f"{paths.root}: resuming after epoch {start_epoch} of {train_cfg.epochs}")
            if rng_note:
                log(f"{paths.root}: {rng_note}")
        for epoch in range(start_epoch + 1, train_cfg.epochs + 1):
            try:
                batches_done = sum(len(h["batch_losses"]) for h in history)
                entry = _train_one_epoch(
                    model,
                    optimizer,
                    data,
                    generator,
                    train_cfg,
                    device,
                    epoch,
                    batches_done,
                    show_progress,
                    task,
                )
            except NonFiniteLoss as exc:
                raise NonFiniteLoss(
                    f"{exc}; stopped, and kept the checkpoint after epoch {saved_epoch} in "
                    f"{paths.root}. Try a lower --lr or a --clip."
                ) from None
            history.append({**entry, "compute": compute})
            save_or_explain(epoch)
            saved_epoch = epoch
            log(task.format_epoch(entry) + task.epoch_pictures(model, data, paths.samples, epoch))
    except KeyboardInterrupt:
        raise TrainingInterrupted(
            f"interrupted; the checkpoint after epoch {saved_epoch} in {paths.root} is intact. "
            f"Resume with: {resume_command(train_cfg.exp_dir, train_cfg.exp_name)}"
        ) from None
    finally:
        log.close()
    return history


def _train_one_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data,
    generator: torch.Generator,
    cfg: TrainConfig,
    device: torch.device,
    epoch: int,
    batches_done: int,
    show_progress: bool,
    task: Task,
) -> dict[str, Any]:
    """One pass over the training digits, then the task's validation and test metrics: the
    epoch's history entry.

    ``batches_done`` counts the mini-batches of earlier epochs (the lr schedule's and scheduled
    sampling's batch index continues from it).
    """
    started = time.perf_counter()
    inputs = task.epoch_inputs(data, generator)
    order = torch.randperm(len(inputs), generator=generator)
    batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
    lr_at = cfg.lr_at(len(batches))
    lr = lr_at(batches_done)
    batch_losses: list[float] = []
    extras: dict[str, list[float]] = {}  # per-batch numbers a task reports (eps of scheduled sampling)
    seen = 0
    model.train()
    bar = progress(batches, f"epoch {epoch}/{cfg.epochs}", unit="batch", enabled=show_progress)
    for batch_index, idx in enumerate(bar):
        batch = inputs[idx].to(device, non_blocking=True)
        labels = data.train_labels[idx].to(device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(batches_done + batch_index)
        try:
            value, reported = task.loss(model, batch, labels, batches_done + batch_index, generator)
            loss = optimize(model, optimizer, value, cfg.clip).item()
            if not math.isfinite(loss):
                raise NonFiniteLoss(f"the training loss became {loss}")
        except NonFiniteLoss as exc:
            bar.close()
            raise NonFiniteLoss(f"{exc} in epoch {epoch}, batch {batch_index + 1}") from None
        for key, number in reported.items():
            extras.setdefault(key, []).append(number)
        batch_losses.append(loss)
        seen += len(idx)
        bar.set_postfix(
            loss=f"{loss:.4f}", seq_s=f"{seen / (time.perf_counter() - started):.0f}", refresh=False
        )
    bar.close()
    train_seconds = time.perf_counter() - started

    # About a tenth of an epoch's time (23 s of 277 at GRU-128): it shows progress too.
    def named(stage: str) -> str | None:
        return f"epoch {epoch}/{cfg.epochs}: {stage}" if show_progress else None

    entry = {
        "epoch": epoch,
        "lr": lr,
        **{key: float(np.mean(values)) for key, values in extras.items()},
        "train_loss": float(np.mean(batch_losses)),
        **task.evaluate(model, data, device, named),
        "train_seconds": train_seconds,
        "seconds": time.perf_counter() - started,
        "train_sequences_per_second": seen / train_seconds,
        "batch_losses": batch_losses,
    }
    # The step's own guard keeps the weights finite; this one keeps every number the epoch saves so.
    for key, value in entry.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise NonFiniteLoss(f"the {key.replace('_', ' ')} became {value} in epoch {epoch}")
    return entry
