"""Experiment folders, atomic writes, and checkpoints that load with ``weights_only=True``.

A checkpoint is a dict of plain values and CPU tensors only: no pickled modules or Namespaces,
so it loads on any machine and with torch's safe loader.

    save_checkpoint(paths.checkpoint, {...})
    checkpoint = load_checkpoint(paths.checkpoint)
    model = NextPixelModel(ModelConfig.from_dict(checkpoint["model_config"]))
    path = experiment_paths("experiments", "fast").checkpoint_file("best")  # best.ckpt, or why not

An experiment keeps two checkpoints: ``checkpoint.ckpt``, the last epoch's (resume continues it), and
``best.ckpt``, the epoch with the best validation figure so far (training.py writes both).
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import pickle
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch

from rnn_mnist.data import DataConfig
from rnn_mnist.errors import RnnMnistError

CHECKPOINT_FORMAT = "rnn-mnist-checkpoint"
CHECKPOINT_VERSION = 1
REQUIRED_KEYS = ("model_config", "model_state", "optimizer_state", "scheduler_state", "epoch")
# What each key holds. A file of the right format with other contents (edited by hand, written by
# another tool or a newer version) is refused in one line here, not with a traceback later.
KEY_TYPES: dict[str, type] = {
    "model_config": dict,
    "model_state": dict,
    "optimizer_state": dict,
    "scheduler_state": dict,
    "epoch": int,
    "config": dict,
    "data_config": dict,
    "history": list,
    "rng_state": dict,
    "weights_sha256": str,
    "shipped": dict,
    "resumes": list,
}
# The sha256 of the weights (``weights_sha256``), recorded by save_checkpoint and checked by every
# load: corrupt weights are refused, not run. Checkpoints saved before it was recorded have none.
WEIGHTS_HASH_KEY = "weights_sha256"
# Marks a shipped checkpoint (rnn_mnist/pretrained.py); its record holds the weights' sha256 too,
# and so does the metrics.json shipped beside it.
SHIPPED_KEY = "shipped"
# The configs a checkpoint holds: every number in them must be finite.
CONFIG_KEYS = ("config", "model_config", "data_config")
_UMASK = os.umask(0)
os.umask(_UMASK)
_EXP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# File systems allow 255 bytes a name; leave room for the temporary files' prefix and suffix.
MAX_EXP_NAME = 100
# Which of an experiment's checkpoints to read: the last epoch's, or the best validation epoch's.
CHECKPOINT_CHOICES = ("last", "best")
# The shipped models (rnn_mnist/pretrained.py): a missing experiment found there is pointed to.
PRETRAINED = "pretrained"
PROJECT_PRETRAINED = Path(__file__).resolve().parent.parent / PRETRAINED


@dataclass(frozen=True)
class ExperimentPaths:
    """Where one experiment's files live: ``<exp_dir>/<exp_name>/``."""

    root: Path

    @classmethod
    def of(cls, exp_dir: str, exp_name: str) -> ExperimentPaths:
        if not _EXP_NAME.fullmatch(exp_name):
            raise RnnMnistError(
                f"experiment name {exp_name!r} must be letters, digits, '.', '_' or '-' "
                "(and start with a letter or digit)"
            )
        if len(exp_name) > MAX_EXP_NAME:
            raise RnnMnistError(
                f"experiment name {exp_name[:20]}... is {len(exp_name)} characters long; "
                f"at most {MAX_EXP_NAME}"
            )
        return cls(Path(exp_dir) / exp_name)

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.ckpt"

    @property
    def best(self) -> Path:
        """The checkpoint of the epoch with the best validation figure (none without a validation split)."""
        return self.root / "best.ckpt"

    def checkpoint_file(self, which: str = "last") -> Path:
        """``checkpoint.ckpt`` (last) or ``best.ckpt`` (best); a missing one is one line saying why."""
        if which not in CHECKPOINT_CHOICES:
            raise RnnMnistError(f"checkpoint must be one of {', '.join(CHECKPOINT_CHOICES)}, not {which!r}")
        if not self.checkpoint.is_file():
            raise RnnMnistError(f"no checkpoint in {self.root} (no {self.checkpoint.name})")
        if which == "last" or self.best.is_file():
            return self.checkpoint if which == "last" else self.best
        raise RnnMnistError(f"no best.ckpt in {self.root}: {self._why_no_best()}; use --checkpoint last")

    def _why_no_best(self) -> str:
        """Why an experiment whose last checkpoint is there has no best one."""
        try:
            last = safe_torch_load(self.checkpoint)
        except Exception:  # the load of the last checkpoint says what is wrong with it
            return "its checkpoint.ckpt is unreadable"
        last = last if isinstance(last, dict) else {}
        if SHIPPED_KEY in last:
            return "a shipped model keeps one checkpoint, its last epoch's"
        if (last.get("data_config") or {}).get("val_size") == 0:
            return "it was trained with --val-size 0: no validation split to choose the best epoch by"
        if last.get("epoch") == 0:
            return "no epoch has finished yet"
        return "it was trained before train.py kept a best checkpoint"

    @property
    def metrics_pkl(self) -> Path:
        return self.root / "metrics.pkl"

    @property
    def metrics_json(self) -> Path:
        return self.root / "metrics.json"

    @property
    def log(self) -> Path:
        return self.root / "train.log"

    @property
    def samples(self) -> Path:
        """Pictures of the model after each epoch: epoch-NNN.png and latest.png."""
        return self.root / "samples"

    @property
    def tensorboard(self) -> Path:
        """TensorBoard's event files (rnn_mnist/tensorboard.py)."""
        return self.root / "tensorboard"

    def exists(self) -> bool:
        return self.checkpoint.exists() or self.metrics_pkl.exists()

    def remove_files(self) -> None:
        """Delete what train.py writes here, and nothing else the folder may hold."""
        for path in (self.checkpoint, self.best, self.metrics_pkl, self.metrics_json, self.log):
            path.unlink(missing_ok=True)
        if self.samples.is_dir():
            for path in [*self.samples.glob("epoch-*.png"), self.samples / "latest.png"]:
                path.unlink(missing_ok=True)
        for path in self.tensorboard.glob("events.out.tfevents.*"):
            path.unlink(missing_ok=True)

    def remove_stale_temp_files(self) -> None:
        """Delete half-written files that a run killed mid-save (SIGKILL, power cut) left behind.

        Only safe while holding the experiment's lock: another run's temporary file is not stale.
        """
        for path in (self.checkpoint, self.best, self.metrics_pkl, self.metrics_json):
            for tmp in temp_files_of(path):
                tmp.unlink(missing_ok=True)


def experiment_paths(exp_dir: str, exp_name: str) -> ExperimentPaths:
    """The folders of an experiment that exists; a missing one is one line, which points to the
    shipped model of that name when there is one (``--exp-dir pretrained``)."""
    paths = ExperimentPaths.of(exp_dir, exp_name)
    if paths.checkpoint.exists():
        return paths
    shipped = _shipped_folder(exp_dir, exp_name)
    if shipped is not None:
        raise RnnMnistError(
            f"no experiment {exp_name!r} in {exp_dir}/; a shipped model of that name is in {shipped}/: "
            f"add --exp-dir {shipped}"
        )
    raise RnnMnistError(
        f"no experiment {exp_name!r} in {exp_dir}/ (no {paths.checkpoint}); train it first with train.py"
    )


def _shipped_folder(exp_dir: str, exp_name: str) -> str | None:
    """Where a shipped model named ``exp_name`` is, as ``--exp-dir`` would name it (``pretrained``
    from the project's folder, else its full path), unless ``exp_dir`` is that folder already."""
    for folder, named in ((Path(PRETRAINED), PRETRAINED), (PROJECT_PRETRAINED, str(PROJECT_PRETRAINED))):
        if (folder / exp_name / "checkpoint.ckpt").is_file() and Path(exp_dir).resolve() != folder.resolve():
            return named
    return None


def temp_files_of(path: Path) -> list[Path]:
    """The temporary files atomic_write makes for ``path`` (see its mkstemp call)."""
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))


def check_writable_folder(folder: Path, what: str) -> None:
    """Make sure files can be created in ``folder`` (or, if it does not exist yet, that it can be
    made), leaving nothing behind: so that a run fails before its work, not after it."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise RnnMnistError(f"{what} {folder} cannot be made: {existing} is a file, not a folder")
    try:  # a real probe: permissions, read-only mounts and ACLs all answer here
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".write-probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise RnnMnistError(f"{what} {folder} is not writable ({exc.strerror or exc})") from None


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write through a temporary file in the same folder, then rename it over ``path``.

    A crash or Ctrl-C mid-write leaves the previous file untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; honour the umask instead
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:  # a failed write names no file: name it
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def atomic_copy(source: Path, dest: Path) -> None:
    """Copy ``source`` over ``dest`` through atomic_write: ``dest`` is the old file or the new one."""
    with open(source, "rb") as original:
        atomic_write(dest, lambda f: shutil.copyfileobj(original, f))


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    """Write ``checkpoint`` atomically, with its format, version and the sha256 of its weights."""
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **checkpoint}
    state = checkpoint.get("model_state")
    if isinstance(state, dict) and all(isinstance(t, torch.Tensor) for t in state.values()):
        payload[WEIGHTS_HASH_KEY] = weights_sha256(state)
    atomic_write(path, lambda f: torch.save(payload, f))


def safe_torch_load(path: Path) -> Any:
    """``torch.load`` with the safe loader (``weights_only=True``), onto the CPU.

    Its warnings are not shown: a raw pickle of another protocol gets two lines of UserWarning before
    the safe loader refuses it, and the caller tells that refusal in one line.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.load(path, map_location="cpu", weights_only=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load and check a checkpoint; a missing, corrupt or foreign file, a config value out of its
    range or weights that are not the ones recorded at save time is an RnnMnistError."""
    path = Path(path)
    if not path.is_file():
        raise RnnMnistError(f"no checkpoint at {path}")
    try:
        checkpoint = safe_torch_load(path)
    except Exception as exc:
        raise _unreadable(path, exc) from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise RnnMnistError(f"{path} is not an rnn-mnist checkpoint")
    if checkpoint.get("version") != CHECKPOINT_VERSION:
        raise RnnMnistError(
            f"{path} has checkpoint version {checkpoint.get('version')}, "
            f"this rnn-mnist reads version {CHECKPOINT_VERSION}"
        )
    missing = [k for k in REQUIRED_KEYS if k not in checkpoint]
    if missing:
        raise RnnMnistError(f"{path} is incomplete: missing {', '.join(missing)}")
    for key, kind in KEY_TYPES.items():
        if key in checkpoint and not isinstance(checkpoint[key], kind):
            raise RnnMnistError(
                f"{path} is not a valid rnn-mnist checkpoint: its {key} is a "
                f"{type(checkpoint[key]).__name__}, not a {kind.__name__}"
            )
    _check_config_values(path, checkpoint)
    _check_weights_hash(path, checkpoint)
    return checkpoint


def _check_config_values(path: Path, checkpoint: dict[str, Any]) -> None:
    """Refuse a NaN or infinity anywhere in the configs, and a data config out of its ranges.

    The model configs check their own ranges when the model is built (rebuild_model); the data
    config is checked here, since every reader rebuilds it on its own.
    """
    for key in CONFIG_KEYS:
        found = _first_non_finite(checkpoint.get(key, {}), key)
        if found is not None:
            place, value = found
            raise RnnMnistError(f"{path} holds an invalid config: {place} is {value}, not a finite number")
    if "data_config" in checkpoint:
        try:
            DataConfig.from_dict(checkpoint["data_config"])
        except (TypeError, ValueError) as exc:
            raise RnnMnistError(f"{path} holds an invalid data config ({exc})") from None


def _first_non_finite(value: Any, where: str) -> tuple[str, float] | None:
    """The first NaN or infinity in nested dicts and lists, and where it is (``config.lr``)."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (where, value)
    if isinstance(value, dict):
        items = [(f"{where}.{key}", item) for key, item in value.items()]
    elif isinstance(value, (list, tuple)):
        items = [(f"{where}[{i}]", item) for i, item in enumerate(value)]
    else:
        return None
    for place, item in items:
        found = _first_non_finite(item, place)
        if found is not None:
            return found
    return None


def recorded_weight_hashes(path: Path, checkpoint: dict[str, Any]) -> list[tuple[str, str]]:
    """Every sha256 recorded for the checkpoint's weights, and where: in the file (save_checkpoint),
    in a shipped checkpoint's record and in the metrics.json shipped beside it (rnn_mnist/pretrained.py).
    Empty for a checkpoint saved before hashes were recorded."""
    recorded = []
    if WEIGHTS_HASH_KEY in checkpoint:
        recorded.append(("in the file", checkpoint[WEIGHTS_HASH_KEY]))
    shipped = checkpoint.get(SHIPPED_KEY)
    if isinstance(shipped, dict):
        if isinstance(shipped.get(WEIGHTS_HASH_KEY), str):
            recorded.append(("in its shipped record", shipped[WEIGHTS_HASH_KEY]))
        beside = Path(path).parent / "metrics.json"
        try:
            metrics = json.loads(beside.read_text())
        except (OSError, UnicodeDecodeError, ValueError):  # the records are not the model: no check
            metrics = None
        if isinstance(metrics, dict) and isinstance(metrics.get(WEIGHTS_HASH_KEY), str):
            recorded.append((f"in {beside}", metrics[WEIGHTS_HASH_KEY]))
    return recorded


def _check_weights_hash(path: Path, checkpoint: dict[str, Any]) -> None:
    """Refuse weights whose sha256 is not every one recorded for them: a corrupt or changed file."""
    recorded = recorded_weight_hashes(path, checkpoint)
    if not recorded:
        return  # saved before hashes were recorded: it loads as it always did
    try:
        found = weights_sha256(checkpoint["model_state"])
    except (RnnMnistError, RuntimeError, TypeError, ValueError) as exc:
        raise RnnMnistError(f"{path}: its weights cannot be hashed to check them ({exc})") from None
    for where, expected in recorded:
        if found != expected:
            raise RnnMnistError(
                f"{path}: its weights are not the ones saved (their sha256 is {found[:12]}, "
                f"{where} it is {expected[:12]}): the file is corrupt or was changed"
            )


def _unreadable(path: Path, exc: Exception) -> RnnMnistError:
    """One line for a file torch.load could not (or would not) read.

    torch's safe loader explains a refusal at length, starting with how to load the file unsafely;
    keep only the reason, and never pass that advice on.
    """
    message = str(exc)
    if isinstance(exc, pickle.UnpicklingError) and "weights_only" in message:
        name = re.search(r"GLOBAL ([\w.]+)", message)
        if name:  # the pickle names a function or class: unpickling would import and call it
            return RnnMnistError(
                f"{path} was refused: loading it would run code (Unsupported global: {name[1]}); "
                "an rnn-mnist checkpoint holds only plain values and tensors"
            )
        found = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", message)
        reason = found[1].strip() if found else "not plain values and tensors"
        return RnnMnistError(f"{path} is not a readable rnn-mnist checkpoint ({reason})")
    first_line = message.strip().splitlines()[0] if message.strip() else type(exc).__name__
    return RnnMnistError(f"{path} is not a readable rnn-mnist checkpoint ({first_line})")


def rebuild_model(
    path: Path, checkpoint: dict[str, Any], build: Callable[[dict], torch.nn.Module]
) -> torch.nn.Module:
    """The model ``build(model_config)`` with the checkpoint's weights; a config or weights that do
    not fit give one line."""
    try:
        model = build(checkpoint["model_config"])
    except (TypeError, ValueError) as exc:
        raise RnnMnistError(f"{path} holds an invalid model config ({exc})") from None
    load_weights(model, checkpoint["model_state"], path)
    return model


def load_weights(module: torch.nn.Module, state: dict[str, Any], path: Path) -> None:
    """``module.load_state_dict(state)``, with weights that do not fit told in one line."""
    expected = module.state_dict()
    problems = [
        f"{k} is {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the model"
        if isinstance(state[k], torch.Tensor)
        else f"{k} is a {type(state[k]).__name__}, not a tensor"
        for k, v in expected.items()
        if k in state and not (isinstance(state[k], torch.Tensor) and state[k].shape == v.shape)
    ]
    problems += [f"{k} is missing" for k in expected if k not in state]
    problems += [f"{k} is not in the model" for k in state if k not in expected]
    if problems:
        more = f"; and {len(problems) - 1} more" if len(problems) > 1 else ""
        raise RnnMnistError(
            f"{path}: its weights do not fit the model its config describes ({problems[0]}{more})"
        )
    try:
        module.load_state_dict(state)
    except (RuntimeError, TypeError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RnnMnistError(f"{path}: its weights do not load ({first_line})") from None


def save_metrics(paths: ExperimentPaths, metrics: dict[str, Any]) -> None:
    """The ``.pkl`` of plain values and a human-readable ``metrics.json`` beside it."""
    atomic_write(paths.metrics_pkl, lambda f: pickle.dump(metrics, f, protocol=4))
    readable = {
        **metrics,
        "history": [{k: v for k, v in entry.items() if k != "batch_losses"} for entry in metrics["history"]],
    }
    atomic_write(paths.metrics_json, lambda f: f.write(json_bytes(readable)))


def json_bytes(value: Any) -> bytes:
    """Strict JSON (RFC 8259) of plain values: a NaN or infinity, which JSON cannot hold (Python would
    write ``NaN``/``Infinity``, which strict parsers reject), is written as null."""

    def finite(v: Any) -> Any:
        if isinstance(v, float):
            return v if math.isfinite(v) else None
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [finite(x) for x in v]
        return v

    return json.dumps(finite(value), indent=2, allow_nan=False).encode()


def to_cpu(value: Any) -> Any:
    """A copy of nested dicts/lists/tuples with every tensor moved to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(v) for v in value)
    return value


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """A content hash of a state dict: every tensor's name, dtype, shape and bytes, in name order.

    It names a set of weights wherever they are stored: two files that hold the same tensors share
    it, and any changed value, dtype or shape changes it.
    """
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name]
        if not isinstance(tensor, torch.Tensor):
            raise RnnMnistError(f"{name!r} in the weights is a {type(tensor).__name__}, not a tensor")
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
