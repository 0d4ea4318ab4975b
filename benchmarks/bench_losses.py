"""CPU benchmark of the distillation losses: FAKD exact bound vs references, label_row and plain KD.

Run: ``.venv/bin/python -m benchmarks.bench_losses [threads]``. Every case is measured in two fresh
subprocesses, one for time and one for memory, so that no case disturbs another.

Time: median of several forward+backward passes after warm-up passes, torch's default threads unless given:
wall-clock time, and the process's CPU time (all threads), which is less disturbed by other load.

Peak memory: growth of the resident set during one forward+backward (after one warm-up pass), measured by
the kernel. The worker resets the resident high-water mark (writing "5" to /proc/self/clear_refs), reads
VmRSS, runs the step and reads VmHWM; the growth is VmHWM − VmRSS. The memory worker runs with
MALLOC_MMAP_THRESHOLD_=65536, so every allocation of 64 KiB or more is its own mmap and goes back to the
kernel when freed: the resident set follows the live tensors, and the growth is the peak of the live memory
the step allocates (the student gradient included, the inputs excluded). That setting makes allocation
slower, which is why time is measured in a separate, untouched process. Where clear_refs is unavailable the
worker reports the growth of ru_maxrss over the step, a lower bound of the same quantity.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from fakd.losses import feature_augmented_kd, pair_table, pixel_kd
from fakd.losses.monte_carlo import augmented_copies, expected_loss

ROOT = Path(__file__).resolve().parents[1]
BATCH, HEIGHT, WIDTH, DIM = 8, 64, 64, 256
PIXELS = BATCH * HEIGHT * WIDTH
STRENGTH, TEMPERATURE = 2.0, 1.0
MC_SAMPLES = 32
# The C×C-table reference is timed on fewer pixels and scaled linearly (its cost and memory are O(M·C²)).
REFERENCE_BATCH, REFERENCE_CHUNK = 1, 512

CASES: list[dict] = [
    {"method": "exact", "classes": 150},
    {"method": "exact_full_cov", "classes": 150},
    {"method": "table_reference", "classes": 150, "batch": REFERENCE_BATCH, "warmup": 1, "repeats": 2},
    {"method": "exact", "classes": 19},
    {"method": "monte_carlo", "classes": 19, "warmup": 1, "repeats": 3},
    {"method": "monte_carlo", "classes": 150, "warmup": 1, "repeats": 3},
    {"method": "label_row", "classes": 19},
    {"method": "label_row", "classes": 150},
    {"method": "plain_kd", "classes": 19},
    {"method": "plain_kd", "classes": 150},
]


# ----------------------------------------------------------------------------- the methods


def table_reference(student, teacher, labels, weight, covariance, strength, temperature, chunk=REFERENCE_CHUNK):
    """Direct bound: per chunk of pixels, materialise the C×C exponent table and autograd its logsumexp."""
    classes = student.shape[1]
    z = student.movedim(1, -1).reshape(-1, classes)
    log_p = F.log_softmax(teacher / temperature, dim=1).movedim(1, -1).reshape(-1, classes)
    scaled = pair_table(weight, covariance) * (strength / (2 * temperature**2))
    flat_labels = labels.reshape(-1)
    total = z.new_zeros(())
    for lo in range(0, z.shape[0], chunk):
        zc, lp, yc = z[lo : lo + chunk], log_p[lo : lo + chunk], flat_labels[lo : lo + chunk]
        exponents = (zc[:, None, :] - zc[:, :, None]) / temperature + scaled[yc]
        total = total + (lp.exp() * (lp + torch.logsumexp(exponents, dim=2))).sum()
    return temperature**2 * total / z.shape[0]


def monte_carlo(student, teacher, labels, weight, covariance, strength, temperature, samples=MC_SAMPLES):
    """Expected KD estimated with K sampled feature augmentations (`fakd.losses.monte_carlo`, one copy at a time)."""
    return expected_loss(pixel_kd, augmented_copies(student, labels, weight, covariance, strength, samples),
                         teacher, temperature)


def method_step(method: str) -> Callable:
    """Loss function of a benchmark method, all with the feature_augmented_kd signature."""
    if method in ("exact", "exact_full_cov"):
        return feature_augmented_kd
    if method == "label_row":
        return lambda *args: feature_augmented_kd(*args, form="label_row")
    if method == "plain_kd":
        return lambda s, t, *_: pixel_kd(s, t, TEMPERATURE)
    return {"table_reference": table_reference, "monte_carlo": monte_carlo}[method]


# ----------------------------------------------------------------------------- the worker


def make_inputs(classes: int, batch: int, full: bool = False) -> tuple:
    """Random logits, labels (every class present), classifier weight and diagonal (or full) covariance."""
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(batch, classes, HEIGHT, WIDTH, generator=gen).requires_grad_(True)
    teacher = torch.randn(batch, classes, HEIGHT, WIDTH, generator=gen) * 2
    labels = torch.randint(0, classes, (batch, HEIGHT, WIDTH), generator=gen)
    weight = torch.randn(classes, DIM, generator=gen) / DIM**0.5
    covariance = torch.rand(classes, DIM, generator=gen)
    if full:
        factor = torch.randn(classes, DIM, DIM, generator=gen) / DIM
        covariance = torch.diag_embed(covariance) + factor @ factor.transpose(1, 2)
    return student, teacher, labels, weight, covariance, STRENGTH, TEMPERATURE


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_growth_mib(step: Callable[[], None]) -> float:
    """Peak resident-set growth (MiB) of one call of ``step`` (see the module docstring)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_kib("VmRSS")
        step()
        return (_status_kib("VmHWM") - before) / 1024
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        step()
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


def run_case(case: dict, mode: str) -> dict:
    """One method in this (fresh) process: median step time (``mode="time"``) or peak growth ("memory")."""
    if case.get("threads"):
        torch.set_num_threads(case["threads"])
    batch = case.get("batch", BATCH)
    inputs = make_inputs(case["classes"], batch, full=case["method"] == "exact_full_cov")
    student = inputs[0]
    loss_fn = method_step(case["method"])

    def step() -> None:
        student.grad = None
        loss_fn(*inputs).backward()

    scale = BATCH / batch
    result = {"threads": torch.get_num_threads(), "scale": scale}
    if mode == "memory":
        step()
        student.grad = None
        result["peak_mib"] = peak_growth_mib(step) * scale
        return result
    for _ in range(case.get("warmup", 2)):
        step()
    times, cpu_times = [], []
    for _ in range(case.get("repeats", 7)):
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    result["time_s"] = statistics.median(times) * scale
    result["cpu_s"] = statistics.median(cpu_times) * scale
    return result


def spawn(case: dict, mode: str) -> dict:
    """Run one case in a fresh interpreter; memory runs map every allocation of 64 KiB or more on its own."""
    env = dict(os.environ)
    if mode == "memory":
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_losses", "--case", json.dumps(case), mode],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure(case: dict) -> dict:
    """Time and peak memory of one case, each from its own fresh process."""
    timing, memory = spawn(case, "time"), spawn(case, "memory")
    batch = case.get("batch", BATCH)
    scaled = f"measured at {batch * HEIGHT * WIDTH} px, scaled ×{timing['scale']:g}"
    return {
        "method": case["method"],
        "classes": case["classes"],
        "pixels": PIXELS,
        "time_s": timing["time_s"],
        "cpu_s": timing["cpu_s"],
        "peak_mib": memory["peak_mib"],
        "threads": timing["threads"],
        "note": scaled if timing["scale"] != 1 else "",
    }


# ----------------------------------------------------------------------------- the report


def add_ratios(rows: list[dict]) -> None:
    """Time and peak-memory ratios of every row to the exact bound at the same number of classes."""
    exact = {row["classes"]: row for row in rows if row["method"] == "exact"}
    for row in rows:
        base = exact[row["classes"]]
        row["time_vs_exact"] = row["time_s"] / base["time_s"]
        row["mem_vs_exact"] = row["peak_mib"] / base["peak_mib"] if base["peak_mib"] > 0 else float("nan")


def markdown(rows: list[dict]) -> str:
    header = (
        "| method | C | pixels | fwd+bwd wall (ms) | fwd+bwd CPU (ms) | peak growth (MiB) "
        "| wall / exact | mem / exact | threads | note |"
    )
    lines = [header, "|" + "---|" * 10]
    for row in rows:
        lines.append(
            f"| {row['method']} | {row['classes']} | {row['pixels']} | {1000 * row['time_s']:.1f} | "
            f"{1000 * row['cpu_s']:.1f} | {row['peak_mib']:.1f} | {row['time_vs_exact']:.2f} | "
            f"{row['mem_vs_exact']:.2f} | {row['threads']} | {row['note']} |"
        )
    return "\n".join(lines)


def main(threads: int | None = None) -> list[dict]:
    """Run every case in fresh processes, print a Markdown table and return the rows.

    ``threads`` sets torch's intra-op threads in the workers (default: torch's default).
    """
    load_before = os.getloadavg()[0]
    rows = [measure(dict(case, threads=threads)) for case in CASES]
    add_ratios(rows)
    print(
        f"torch {torch.__version__}, CPU ({os.cpu_count()} cores), torch threads {rows[0]['threads']}, "
        f"D={DIM}, λ={STRENGTH}, T={TEMPERATURE}, diagonal Σ unless full; "
        f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    )
    print(markdown(rows))
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--case":
        print(json.dumps(run_case(json.loads(sys.argv[2]), sys.argv[3])))
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else None)
