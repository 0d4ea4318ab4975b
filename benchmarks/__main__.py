"""Run every benchmark: `python -m benchmarks [name ...]` (names: train_step, losses, harness, cluster, search,
cityscapes_step, cli)."""

from __future__ import annotations

import importlib
import os
import platform
import sys
import time

import torch

BENCHMARKS = ("train_step", "losses", "harness", "cluster", "search", "cityscapes_step", "cli")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} cores ({cpu}), torch {torch.__version__} with {torch.get_num_threads()} threads, {gpu}"


def main(names: list[str]) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"# fakd benchmarks, {time.strftime('%Y-%m-%d %H:%M')}, {machine()}\n", flush=True)
    for name in names or BENCHMARKS:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        print(f"## {name}\n", flush=True)
        module.main()
        print(flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
