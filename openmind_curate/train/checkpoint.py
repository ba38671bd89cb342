"""Training checkpoints: everything a bit-exact resume needs, written atomically.

A checkpoint holds the (unwrapped) model, optimizer, scheduler and grad-scaler
state, the RNG states (python, numpy, torch CPU and CUDA), the next step, and
the run's configuration with its hash. It is written under a temporary name in
the run folder, fsynced and renamed: a crash mid-write leaves the previous
checkpoint whole and no partial file.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from openmind_curate.atomic import atomic_path
from openmind_curate.errors import ConflictError

FORMAT = "openmind-curate-checkpoint/1"


class CheckpointError(ConflictError):
    """A checkpoint that cannot be used: missing, unreadable or from another config."""


def config_hash(config: dict[str, Any]) -> str:
    """A short, stable hash of a JSON-able configuration."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # noqa: NPY002 - the legacy global state
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:  # another machine: this process's device takes device 0's state
            torch.cuda.set_rng_state(cuda[0])


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """`torch.save` to a temporary sibling, fsync, rename onto `path`."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            torch.save({"format": FORMAT, **state}, fh)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def load_checkpoint(
    path: str | os.PathLike[str],
    expect_hash: str | None = None,
    expect_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint at `path`; with `expect_hash`, one from that configuration
    only (a mismatch names the options that differ)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint to resume: {path} does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is "unreadable"
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint written by curate train")
    if expect_hash is not None and blob.get("config_hash") != expect_hash:
        old = blob.get("config", {})
        new = expect_config or {}
        diff = [
            f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
            for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)
        ]
        detail = f" ({'; '.join(diff)})" if diff else ""
        raise CheckpointError(
            f"cannot resume: {path} was written with a different configuration{detail}; "
            "resume with the options of that run, or train into another --out"
        )
    return blob
