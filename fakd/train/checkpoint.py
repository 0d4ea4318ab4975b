"""Full-state checkpoints, written atomically, and the RNG states they carry."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "state.pt"
PREFIX = "iter_"


def capture_rng() -> dict[str, Any]:
    """Every RNG stream training may touch."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj: Any, path: Path) -> None:
    """`torch.save` to a temporary file beside `path`, flushed to disk, then renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_checkpoint(state: dict[str, Any], root: Path, iteration: int) -> Path:
    """Write `state` as `root/iter_NNNNNNN/state.pt`; the directory appears complete or not at all."""
    final = root / f"{PREFIX}{iteration:07d}"
    staging = root / f".staging-{PREFIX}{iteration:07d}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    atomic_save(state, staging / STATE_FILE)
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint directory under `root`, if any."""
    if not root.is_dir():
        return None
    found = sorted(p for p in root.glob(f"{PREFIX}*") if (p / STATE_FILE).is_file())
    return found[-1] if found else None


def prune_checkpoints(root: Path, keep: Path) -> None:
    """Remove every checkpoint directory under `root` except `keep`."""
    for path in root.glob(f"{PREFIX}*"):
        if path != keep:
            shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(directory: str | Path) -> dict[str, Any]:
    return torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=False)
