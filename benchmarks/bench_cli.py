"""The command line answers in a second: wall time and peak memory of the commands that only read (`status`,
`export` md/csv, `--help`) and of every kind of refusal, each a fresh `launch.py` process, from a warm file cache.

The study they read is a real tiny one, made by `launch.py sweep` (untimed); `python -m benchmarks cli STUDY`
measures an existing study instead."""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.common import markdown
from fakd import spec_yaml

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "studies" / "quickstart.yaml"
TARGET_SECONDS, TARGET_MB, REPEATS = 1.5, 300.0, 5
TINY = {"train.iters": 4, "train.eval_every": 2, "teacher.iters": 4, "search.num_samples": 1,
        "search.retrain_seeds": 2, "data.train_length": 8, "data.val_length": 4, "data.image_size": 32}


# `launch.py ARGS` that writes its peak resident memory (VmHWM: of this program alone, unlike the rusage of a
# child forked from a benchmark process that has loaded torch) to the file named by the first argument
PEAK_PROBE = """
import atexit, runpy, sys
out, sys.argv = sys.argv[1], sys.argv[2:]
def peak():
    kb = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM"))
    open(out, "w").write(kb)
atexit.register(peak)
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_once(args: list[str], peak_file: Path) -> tuple[float, float, int]:
    """Wall seconds, peak resident MB and exit code of one `launch.py ARGS` process."""
    start = time.perf_counter()
    code = subprocess.call([sys.executable, "-c", PEAK_PROBE, str(peak_file), str(ROOT / "launch.py"), *args],
                           cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    return seconds, int(peak_file.read_text()) / 1024, code


def tiny_study(work: Path) -> Path:
    """A finished study of the quickstart at the smallest size (search and retrain)."""
    raw = yaml.safe_load(SPEC.read_text())
    raw.pop("search", None)
    raw["search"] = {"num_samples": 1, "retrain_seeds": 2}
    for dotted, value in TINY.items():
        section, key = dotted.split(".")
        raw.setdefault(section, {})[key] = value
    spec = work / "tiny.yaml"
    spec.write_text(spec_yaml.dump(raw))
    subprocess.run([sys.executable, str(ROOT / "launch.py"), "sweep", str(spec), "--storage", str(work / "studies"),
                    "--no-wandb"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return work / "studies" / raw["name"]


def commands(study: Path, work: Path) -> dict[str, list[str]]:
    bad_yaml = work / "bad.yaml"
    bad_yaml.write_text("name: x\nteacher: [unclosed\n")
    return {
        "--help": ["--help"],
        "status": ["status", str(study)],
        "status --json": ["status", str(study), "--json"],
        "export (md)": ["export", str(study)],
        "export --format csv": ["export", str(study), "--format", "csv"],
        "sweep, bad --set": ["sweep", str(SPEC), "--storage", str(work / "refused"), "--set", "train.iters=-5"],
        "sweep, bad YAML": ["sweep", str(bad_yaml), "--storage", str(work / "refused")],
        "retrain, bad --seeds": ["retrain", str(study), "--seeds", "0"],
        "export, not a study": ["export", str(work)],
        "unknown command": ["sweeep"],
    }


def main(study: str | None = None) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        target = Path(study) if study else tiny_study(work)
        for name, args in commands(target, work).items():
            run_once(args, work / "peak")  # warm the file cache
            runs = [run_once(args, work / "peak") for _ in range(REPEATS)]
            seconds = statistics.median(r[0] for r in runs)
            peak = max(r[1] for r in runs)
            rows.append({"command": name, "exit": runs[0][2], "median s": seconds, "peak MB": peak,
                         "within target": "yes" if seconds <= TARGET_SECONDS and peak <= TARGET_MB else "NO"})
    print(f"{REPEATS} runs each after one warm-up; target ≤ {TARGET_SECONDS} s and ≤ {TARGET_MB:.0f} MB\n")
    print(markdown(rows, ["command", "exit", "median s", "peak MB", "within target"]))
    return rows


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
