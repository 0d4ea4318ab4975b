"""A throwaway memory cgroup (v1 or v2) under this process's own, to run a process under a real memory limit.

`memory_cgroup(limit)` yields the cgroup's `cgroup.procs` file, or None where cgroups cannot be made here (not root,
no memory controller, a read-only cgroup file system, or swap that the cgroup cannot be kept from); and removes the
cgroup after its processes ended."""

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


def _own_memory_cgroup() -> tuple[Path, str, str] | None:
    """(directory, limit file, swap-limit file) of the memory cgroup this process is in."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):  # v1
            return ROOT / "memory" / path.lstrip("/"), "memory.limit_in_bytes", "memory.memsw.limit_in_bytes"
        if controllers == "" and (ROOT / "cgroup.controllers").is_file():  # v2, mounted at the root
            return ROOT / path.lstrip("/"), "memory.max", "memory.swap.max"
    return None


def _swap_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("SwapTotal:"):
            return int(line.split()[1]) * 1024
    return 0


@contextlib.contextmanager
def memory_cgroup(limit_bytes: int) -> Iterator[Path | None]:
    own = _own_memory_cgroup() if os.geteuid() == 0 else None
    if own is None or not own[0].is_dir():
        yield None
        return
    parent, limit_file, swap_file = own
    group = parent / f"fakd-test-{os.getpid()}"
    try:
        group.mkdir()
        (group / limit_file).write_text(str(limit_bytes))
    except OSError:
        with contextlib.suppress(OSError):
            group.rmdir()
        yield None
        return
    try:  # no swap to fall back on: the limit must end in the OOM killer, not in swapping
        (group / swap_file).write_text(str(limit_bytes) if swap_file.startswith("memory.memsw") else "0")
    except OSError:
        if _swap_bytes() > 0:
            group.rmdir()
            yield None
            return
    try:
        yield group / "cgroup.procs"
    finally:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)
