"""Atomic, pickle-free checkpoints: safetensors for tensors, JSON for everything else.

Layout of ``<dir>/step-00000120/``::

    model.safetensors       student weights (shared/tied tensors handled by safetensors)
    loss.safetensors        learnable loss parts (FitNets regressors), if any
    optimizer.safetensors   optimizer state tensors, flattened as "<param index>.<name>"
    rng.safetensors         torch CPU (and CUDA) generator states, one set per process
    state.json              loop state, optimizer/scheduler scalars, numpy/python RNG

Each checkpoint is written into a hidden temporary folder and renamed into place, then the
``latest`` pointer is replaced atomically. A crash mid-write leaves the previous checkpoint
and pointer untouched; a folder whose name lacks the prefix is never read.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from common.errors import CheckpointError
from common.io import atomic_write_json, atomic_write_text

PREFIX = "step-"
LATEST = "latest"


def _flatten_optimizer(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, per_param in state["state"].items():
        for name, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    # JSON turned tuples (Adam's betas, Rprop's etas) into lists; optimizers hold them as
    # tuples, and a list would compare and print differently after a resume.
    groups = [
        {k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in group.items()}
        for group in meta["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


RngState = tuple[dict[str, torch.Tensor], dict[str, Any]]
"""One process's generators: tensors (torch CPU, and CUDA when in use) and JSON (numpy, python)."""


def rng_state() -> RngState:
    """This process's generator states: torch's CPU generator, the current CUDA device's when
    CUDA has been used (dropout on a GPU draws from it), numpy's and python's."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["torch_cuda"] = torch.cuda.get_rng_state()
    return tensors, {
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
        "python": [py_version, list(py_state), py_gauss],
    }


def _set_rng_state(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    if "torch_cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["torch_cuda"])
    kind, keys, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    py_version, py_state, py_gauss = meta["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))


def _process_prefix(index: int) -> str:
    # Process 0 keeps the bare names, so checkpoints written before per-process states read.
    return "" if index == 0 else f"process{index}."


def _pack_rng(states: Sequence[RngState]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {
        _process_prefix(i) + name: value.contiguous()
        for i, (state_tensors, _) in enumerate(states)
        for name, value in state_tensors.items()
    }
    return tensors, states[0][1]


def _unpack_rng(
    tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], index: int
) -> tuple[dict[str, torch.Tensor], Mapping[str, Any]]:
    """Process ``index``'s saved states; process 0's when it has none (a checkpoint from
    before per-process states were kept)."""
    others = meta.get("rng_processes", [])
    if index == 0 or index > len(others):
        return {k: v for k, v in tensors.items() if "." not in k}, meta["rng"]
    prefix = _process_prefix(index)
    mine = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    return mine, others[index - 1]


def _json_safe(obj: Any, where: str) -> Any:
    try:
        json.dumps(obj, allow_nan=True)
    except TypeError as err:
        raise CheckpointError(
            f"cannot store {where} as JSON ({err}); use a scheduler/optimizer whose state_dict "
            "holds only numbers, strings and lists (e.g. a LambdaLR built from a plain function)"
        ) from None
    return obj


def save_checkpoint(
    directory: Path,
    step: int,
    *,
    model: nn.Module,
    loop_state: Mapping[str, Any],
    loss_module: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    keep_last: int = 2,
    config: Mapping[str, Any] | None = None,
    rng_states: Sequence[RngState] | None = None,
) -> Path:
    """Write checkpoint ``step`` under ``directory`` atomically; prune to ``keep_last``.

    ``rng_states``: every process's generator states (:func:`rng_state`), process 0 first,
    gathered by the caller under ``accelerate launch``: processes that drew different amounts
    (batches of other lengths, per-process noise) then each resume their own stream. Unset:
    this process's states alone."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{PREFIX}{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=directory, prefix=f".tmp-{PREFIX}{step:08d}-"))
    try:
        save_model(model, str(tmp / "model.safetensors"))
        if loss_module is not None and any(True for _ in loss_module.state_dict()):
            save_model(loss_module, str(tmp / "loss.safetensors"))
        meta: dict[str, Any] = {
            "step": step,
            "loop": _json_safe(dict(loop_state), "loop state"),
            "config": _json_safe(dict(config or {}), "run configuration"),
        }
        if optimizer is not None:
            opt_tensors, meta["optimizer"] = _flatten_optimizer(optimizer.state_dict())
            _json_safe(meta["optimizer"], "optimizer state")
            save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        if scheduler is not None:
            meta["scheduler"] = _json_safe(scheduler.state_dict(), "scheduler state")
        states = list(rng_states) if rng_states else [rng_state()]
        rng_tensors, meta["rng"] = _pack_rng(states)
        meta["processes"] = len(states)
        if len(states) > 1:
            meta["rng_processes"] = [json_state for _, json_state in states[1:]]
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        # state.json last: its presence marks the folder complete even before the rename.
        atomic_write_json(tmp / "state.json", meta)
        _fsync_tree(tmp)
        if final.exists():  # re-saving the same step (after a resume): swap, never delete first
            old = directory / f".old-{final.name}-{os.getpid()}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        _fsync_dir(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(directory / LATEST, final.name + "\n")
    for old_ckpt in list_checkpoints(directory)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old_ckpt, ignore_errors=True)
    # Temporary folders of killed writers (not ours: ours is renamed or removed above).
    for stale in directory.glob(f".tmp-{PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """Flush every file and the folder itself, so a power cut after the rename cannot leave
    a complete-looking checkpoint with truncated tensors."""
    for f in folder.iterdir():
        with open(f, "rb") as handle:
            os.fsync(handle.fileno())
    _fsync_dir(folder)


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints under ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [
        p
        for p in directory.iterdir()
        if p.is_dir() and p.name.startswith(PREFIX) and (p / "state.json").is_file()
    ]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(directory: Path) -> Path | None:
    """The checkpoint the ``latest`` pointer names, else the newest complete one, else None."""
    directory = Path(directory)
    pointer = directory / LATEST
    if pointer.is_file():
        named = directory / pointer.read_text(encoding="utf-8").strip()
        if (named / "state.json").is_file():
            return named
    found = list_checkpoints(directory)
    return found[-1] if found else None


def changed_settings(
    saved: Mapping[str, Any], wanted: Mapping[str, Any]
) -> dict[str, tuple[Any, Any]]:
    """``{key: (saved value, wanted value)}`` for the top-level keys that differ between saved
    settings (read back from JSON) and the wanted ones, compared as JSON would store them
    (tuples become lists); sorted by key, empty when nothing changed."""
    wanted = json.loads(json.dumps(dict(wanted)))
    keys = sorted(k for k in saved.keys() | wanted.keys() if saved.get(k) != wanted.get(k))
    return {k: (saved.get(k), wanted.get(k)) for k in keys}


class CorruptCheckpointError(CheckpointError):
    """A checkpoint whose files cannot be read (truncated, garbled): an older one may serve."""


def load_checkpoint(
    path: Path,
    *,
    model: nn.Module,
    loss_module: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    restore_rng: bool = True,
    config: Mapping[str, Any] | None = None,
    process_index: int = 0,
    processes: int = 1,
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` into the given objects in place.

    Returns the saved loop state. Shape or key mismatches raise :class:`CheckpointError`
    naming the checkpoint, so resuming with a changed model is caught, not half-loaded; so
    does a ``config`` that differs from the one saved (a run resumed with other settings
    would be neither the old run nor the new one). ``process_index`` picks which process's
    saved generator states to restore (process 0's when the checkpoint has none for it);
    a checkpoint written by another number of ``processes`` is refused: each process's place
    in the epoch and its generators belong to that sharding of the data.
    """
    path = Path(path)
    state_file = path / "state.json"
    if not state_file.is_file():
        raise CheckpointError(
            f"{path} is not a complete checkpoint (no state.json); delete it to start afresh"
        )
    try:
        meta = json.loads(state_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptCheckpointError(f"{state_file} is not valid JSON ({err})") from None
    saved_processes = meta.get("processes", processes)  # absent: written before it was kept
    if saved_processes != processes:
        raise CheckpointError(
            f"checkpoint {path} was written by {saved_processes} process(es), this run has "
            f"{processes}: resume with `accelerate launch --num_processes {saved_processes}` "
            "(the data's sharding and each process's place in it belong to that count), or "
            "start afresh in a new run directory"
        )
    if config is not None:
        changed = changed_settings(meta.get("config", {}), config)
        if changed:
            diff = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            raise CheckpointError(
                f"checkpoint {path} was written with other settings ({diff}); resume with the "
                "same settings, or start afresh in a new run directory"
            )
    try:
        load_model(model, str(path / "model.safetensors"))
        loss_file = path / "loss.safetensors"
        if loss_module is not None and loss_file.is_file():
            load_model(loss_module, str(loss_file))
        elif loss_module is not None and any(True for _ in loss_module.state_dict()):
            raise CheckpointError(
                f"{path} holds no loss-module weights, but this run's loss has some"
            )
    except SafetensorError as err:
        raise CorruptCheckpointError(f"{path}: a weights file is unreadable ({err})") from None
    except RuntimeError as err:
        raise CheckpointError(
            f"checkpoint {path} does not fit this model ({err}). Was the model or loss changed "
            "since it was written? Resume with the same configuration, or use a new run directory."
        ) from None
    try:
        if optimizer is not None and "optimizer" in meta:
            tensors = load_file(str(path / "optimizer.safetensors"))
            optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
        if scheduler is not None and "scheduler" in meta:
            scheduler.load_state_dict(meta["scheduler"])
        if restore_rng:
            tensors = load_file(str(path / "rng.safetensors"))
            _set_rng_state(*_unpack_rng(tensors, meta, process_index))
    except (SafetensorError, OSError, KeyError) as err:
        raise CorruptCheckpointError(f"{path}: optimizer or RNG state unreadable ({err})") from None
    return meta["loop"]
