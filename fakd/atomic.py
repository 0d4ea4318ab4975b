"""Files that appear whole or not at all: every file the project writes into a study or a cache goes through here.

A file is written to a temporary name beside its target, flushed to disk, then renamed over the target (a rename
within one directory is atomic). If writing fails (a full disk, a read-only file system, a signal), the temporary
file is removed and the target is left as it was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """A handle to write `path` through a temporary file (`mode` "w" or "wb")."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path`, whole or not at all."""
    with atomic_file(path) as handle:
        handle.write(text)


def copy_atomic(source: str | Path, target: Path) -> None:
    """Copy `source` to `target`, whole or not at all."""
    with atomic_file(target, "wb") as handle, open(source, "rb") as data:
        shutil.copyfileobj(data, handle)
