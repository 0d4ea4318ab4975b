"""Full-state checkpoints, written atomically, and the RNG states they carry.

Every file is read back with `torch.load(weights_only=True)`: checkpoints hold only tensors and plain Python
values (the RNG states included), so reading one never runs code.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fakd.atomic import atomic_file
from fakd.errors import UserError

STATE_FILE = "state.pt"
PREFIX = "iter_"


def capture_rng() -> dict[str, Any]:
    """Every RNG stream training may touch, as tensors and plain Python values (loadable with weights_only)."""
    state: dict[str, Any] = {
        "python": _python_state(random.getstate()),
        "numpy": _numpy_state(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Set every RNG stream to what `capture_rng` recorded."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    numpy = state["numpy"]
    np.random.set_state((
        numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
        numpy["cached_gaussian"],
    ))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state(state: tuple[Any, ...]) -> tuple[int, tuple[int, ...], float | None]:
    version, internal, gauss_next = state
    return int(version), tuple(int(v) for v in internal), None if gauss_next is None else float(gauss_next)


def _numpy_state(state: tuple[Any, ...]) -> dict[str, Any]:
    """numpy's legacy global state, its 624 uint32 keys held as an int64 tensor."""
    kind, keys, pos, has_gauss, cached_gaussian = state
    return {
        "kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
        "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian),
    }


def safe_load(path: str | Path, what: str, key: str | None = None) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU; any failure is a one-line UserError naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many kinds for a damaged or unsafe file
        raise UserError(
            f"cannot load {what} {path}: {load_error_reason(exc)} (read with torch.load(weights_only=True), "
            "which accepts tensors and plain Python values only)",
            key=key,
        ) from None


def load_error_reason(exc: BaseException) -> str:
    """The informative first sentence of a `torch.load` error."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return f"{type(exc).__name__} (empty or truncated file)" if isinstance(exc, EOFError) else type(exc).__name__
    return lines[0].split(". ")[0].rstrip(".")


def atomic_save(obj: Any, path: Path) -> None:
    """`torch.save` to a temporary file beside `path`, flushed to disk, then renamed over it."""
    with atomic_file(path, "wb") as handle:
        torch.save(obj, handle)


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


def checkpoint_iteration(directory: Path) -> int:
    """The iteration a checkpoint directory written by `write_checkpoint` holds (from its name)."""
    return int(directory.name.removeprefix(PREFIX))


def prune_checkpoints(root: Path, keep: Path) -> None:
    """Remove every checkpoint directory under `root` except `keep`."""
    for path in root.glob(f"{PREFIX}*"):
        if path != keep:
            shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(directory: str | Path) -> dict[str, Any]:
    """The state a `write_checkpoint` call saved in `directory`, read safely (UserError when not loadable)."""
    path = Path(directory) / STATE_FILE
    state = safe_load(path, "trial checkpoint")
    if not isinstance(state, dict):
        raise UserError(f"{path} is not a trial checkpoint: it holds a {type(state).__name__}, not a dict")
    return state
