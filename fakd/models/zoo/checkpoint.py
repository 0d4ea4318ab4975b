"""Reading model-zoo checkpoint files safely: `torch.load(weights_only=True)` only, user-facing errors.

Only tensors, containers and plain values are unpickled; numpy scalars (which training loops leave in
checkpoint metadata, e.g. a best score) are allowed too, since they rebuild from raw bytes and a dtype.
Anything else (a class, a function, code) stops the load with a `UserError` naming the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import torch

from fakd.errors import UserError

CHECKPOINT_KEY = "teacher.checkpoint"
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def checkpoint_error(path: str, problem: str, expected: str) -> UserError:
    """One line naming the file, what is wrong with it and what was expected."""
    return UserError(f"{path}: {problem}; expected {expected}", key=CHECKPOINT_KEY)


def read_checkpoint(path: str | os.PathLike[str], expected: str) -> Any:
    """The unpickled content of `path` (tensors and plain values only), or a `UserError`."""
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}; expected {expected}", key=CHECKPOINT_KEY)
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt or unsafe files
        raise checkpoint_error(path, _load_problem(error), expected) from error


def tensor_state_dict(path: str, content: Any, expected: str, wrappers: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The state dict in `content`: the mapping itself, or its first `wrappers` entry that is one."""
    state = content
    if isinstance(content, Mapping):
        for wrapper in wrappers:
            if isinstance(content.get(wrapper), Mapping):
                state = content[wrapper]
                break
    if not isinstance(state, Mapping) or not state:
        kind = type(content).__name__
        raise checkpoint_error(path, f"holds a {kind}, not a state dict of tensors", expected)
    non_tensors = [str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if non_tensors:
        keys = list(content) if isinstance(content, Mapping) else []
        problem = f"has no state dict of tensors (top-level keys: {preview(map(str, keys))})"
        if state is not content:
            problem = f"has non-tensor entries in its state dict: {preview(non_tensors)}"
        raise checkpoint_error(path, problem, expected)
    return dict(state)


def strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Drop `prefix` from every key when every key has it (DistributedDataParallel's `module.`)."""
    if state and all(key.startswith(prefix) for key in state):
        return {key[len(prefix) :]: value for key, value in state.items()}
    return state


def load_exactly(module: torch.nn.Module, state: dict[str, torch.Tensor], path: str, expected: str) -> None:
    """Load `state` into `module` strictly: every key consumed, none missing, every shape equal."""
    own = module.state_dict()
    problems = {
        "missing keys": [key for key in own if key not in state and not key.endswith("num_batches_tracked")],
        "unexpected keys": [key for key in state if key not in own],
        "shape mismatches (file vs model)": [
            f"{key} {tuple(state[key].shape)} vs {tuple(own[key].shape)}"
            for key in own
            if key in state and state[key].shape != own[key].shape
        ],
    }
    found = "; ".join(f"{label}: {preview(keys)}" for label, keys in problems.items() if keys)
    if found:
        raise checkpoint_error(path, f"does not fit the architecture read from it ({found})", expected)
    module.load_state_dict(state, strict=True)


def preview(items: Any, limit: int = 4) -> str:
    """At most `limit` items joined by commas, then how many more."""
    items = list(items)
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _load_problem(error: Exception) -> str:
    text = str(error)
    found = _UNSUPPORTED_GLOBAL.search(text)
    if found:
        return (
            f"pickles {found.group(1)}, which a weights-only load refuses (it may run code); "
            "re-save only the tensors, e.g. torch.save({'state_dict': ..., 'meta': ...})"
        )
    first = text.strip().splitlines()[0] if text.strip() else "the file ends early"
    return f"is not a readable PyTorch checkpoint ({type(error).__name__}: {first[:160]})"


def _numpy_scalar_globals() -> list[Any]:
    """numpy scalar and numeric dtype reconstructors (never arrays, objects or strings)."""
    try:
        import numpy as np
    except ImportError:
        return []
    core = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
    scalar = core.multiarray.scalar
    numeric = ("Bool", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64")
    numeric += ("Float16", "Float32", "Float64")
    dtypes = [getattr(np.dtypes, f"{name}DType") for name in numeric if hasattr(np.dtypes, f"{name}DType")]
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype, *dtypes]
