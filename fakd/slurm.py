"""`launch.py slurm`: a Slurm batch script that runs a study to its end across time limits and requeues.

The script lives in `STUDY/slurm/job.sbatch`, the job's output beside it (`STUDY/slurm/job-<id>.out`). Each run of
the job decides from the study directory what to do: a `sweep` when the study does not exist yet, else a `resume`,
so a requeued job continues the study. With more than one node it starts a Ray head on the first node and a Ray
worker on each other node (`srun`, Ray's temporary directory on node-local storage), waits until every node has
joined (bounded), and drives the study on that cluster. Slurm sends the batch shell SIGTERM `--grace` seconds
before the time limit (`--signal=B:TERM@grace`); the script then stops the driver as Ctrl-C does (the trials keep
their checkpoints) and requeues its own job.

Nothing here imports torch or Ray: every refusal is one line before anything is written or submitted.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from fakd.atomic import write_atomic
from fakd.errors import UserError
from fakd.results.layout import StudyDir, check_outside_studies

TIME = re.compile(r"^(?:(\d+)-)?(\d{1,2}):(\d{2}):(\d{2})$")
LOCAL_FILE_SYSTEMS = ("tmpfs", "ramfs", "devtmpfs")
LOCAL_PLACES = ("/tmp", "/var/tmp", "/dev/shm", "/run")
JOIN_TIMEOUT_S = 300
"""How long the script waits for every node's Ray worker to join before it gives up (exit 1, with a line); the
job's environment may set another (`FAKD_JOIN_TIMEOUT_S`)."""
RAY_PORT = 6379
SCRIPT = "job.sbatch"
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Job:
    """What `launch.py slurm` was asked for (times in seconds)."""

    spec: Path
    storage: Path
    name: str
    overrides: list[str] = field(default_factory=list)
    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    mem: str | None = None
    time_s: int = 3600
    grace_s: int = 300
    partition: str | None = None
    account: str | None = None


def parse_time(text: str) -> int:
    """Slurm's `[D-]HH:MM:SS` in seconds; one line naming the accepted form otherwise."""
    match = TIME.match(text.strip())
    if match is None or int(match[3]) > 59 or int(match[4]) > 59:
        raise UserError(f"{text!r} is not a time limit; accepted: HH:MM:SS or D-HH:MM:SS (e.g. 04:00:00)",
                        key="--time")
    days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if total <= 0:
        raise UserError(f"{text!r} is no time at all; accepted: HH:MM:SS or D-HH:MM:SS", key="--time")
    return total


def local_storage(path: Path) -> str | None:
    """Why `path` is on storage only its own node sees (a temporary directory, a RAM file system), or None."""
    resolved = path.resolve()
    for place in LOCAL_PLACES:
        if resolved == Path(place) or resolved.is_relative_to(place):
            return f"it lies under {place}, a node-local temporary directory"
    mounts: list[tuple[Path, str]] = []
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3:
                mounts.append((Path(fields[1].replace("\\040", " ")), fields[2]))
    except OSError:
        return None
    holding = [(point, kind) for point, kind in mounts if resolved == point or resolved.is_relative_to(point)]
    if holding:
        point, kind = max(holding, key=lambda mount: len(mount[0].parts))
        if kind in LOCAL_FILE_SYSTEMS:
            return f"it is on a {kind} mounted at {point}, which lives in one node's memory"
    return None


def check_job(job: Job, *, allow_local: bool, submit: bool, spec_gpus: int) -> None:
    """Every refusal before anything is written: one line each (`UserError`, exit 2)."""
    if job.nodes < 1:
        raise UserError(f"--nodes {job.nodes}: a job needs at least one node", key="--nodes")
    if job.grace_s >= job.time_s:
        raise UserError(f"--grace {job.grace_s} s is not shorter than the time limit ({job.time_s} s): the study "
                        "would be stopped before it starts", key="--grace")
    if job.gpus_per_node < spec_gpus:
        raise UserError(f"--gpus-per-node {job.gpus_per_node} is fewer than one trial needs (resources.gpu × "
                        f"resources.workers = {spec_gpus} in {job.spec})", key="--gpus-per-node")
    if submit and shutil.which("sbatch") is None:
        raise UserError("--submit needs Slurm's sbatch, which is not on PATH; without --submit the script is only "
                        "written", key="--submit")
    if job.partition is not None and shutil.which("sinfo") is not None:
        listed = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True, timeout=30)
        partitions = sorted(set(listed.stdout.split()))
        if listed.returncode == 0 and partitions and job.partition not in partitions:
            raise UserError(f"no partition {job.partition!r}; sinfo lists: {', '.join(partitions)}",
                            key="--partition")
    local = local_storage(job.storage)
    if local is not None and not allow_local:
        raise UserError(f"{job.storage} is not on storage every node sees: {local}; put the study on a shared "
                        "file system, or pass --allow-local for a single-node job", key="--storage")
    if local is not None and job.nodes > 1:
        raise UserError(f"{job.storage} is node-local ({local}): a job of {job.nodes} nodes needs storage every "
                        "node sees (--allow-local is for single-node jobs)", key="--storage")


def write_job(job: Job) -> Path:
    """Write `STUDY/slurm/job.sbatch`; return its path. The study directory may exist already (the job then
    resumes it) but is never inside another study."""
    check_outside_studies(job.storage, "--storage")
    study = StudyDir(job.storage / job.name)
    folder = study.root / "slurm"
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / SCRIPT
    write_atomic(script, render_script(job, study))
    script.chmod(0o755)
    return script


def submit(script: Path) -> str:
    """`sbatch SCRIPT`: the job id, or a `UserError` with sbatch's own words."""
    done = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        message = " ".join((done.stderr or done.stdout).split())[:300]
        raise UserError(f"sbatch refused {script}: {message}", key="--submit")
    return done.stdout.strip().split(";")[0]


def _hhmmss(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    return (f"{days}-" if days else "") + f"{hours:02d}:{minutes:02d}:{seconds:02d}"


def render_script(job: Job, study: StudyDir) -> str:
    """The batch script (bash) for `job` on `study`."""
    q = shlex.quote
    directives = [f"--job-name=fakd-{job.name}", f"--nodes={job.nodes}", "--ntasks-per-node=1",
                  f"--time={_hhmmss(job.time_s)}", f"--signal=B:TERM@{job.grace_s}", "--requeue",
                  "--open-mode=append", f"--output={study.root / 'slurm' / 'job-%j.out'}"]
    if job.cpus_per_task is not None:
        directives.append(f"--cpus-per-task={job.cpus_per_task}")
    if job.gpus_per_node:
        directives.append(f"--gpus-per-node={job.gpus_per_node}")
    for option, value in (("mem", job.mem), ("partition", job.partition), ("account", job.account)):
        if value is not None:
            directives.append(f"--{option}={value}")
    sweep = ["sweep", str(job.spec), "--storage", str(job.storage), "--name", job.name]
    for override in job.overrides:
        sweep += ["--set", override]
    lines = ["#!/bin/bash", *(f"#SBATCH {d}" for d in directives),
             "# Written by `launch.py slurm`. Submit it with sbatch; a requeued run resumes the study.",
             "set -u",
             f"STUDY={q(str(study.root))}",
             f"PYTHON={q(sys.executable)}",
             f"LAUNCH={q(str(ROOT / 'launch.py'))}",
             f"cd {q(str(ROOT))}",
             'echo "fakd: job ${SLURM_JOB_ID} (run $((${SLURM_RESTART_COUNT:-0} + 1))) on ${SLURM_JOB_NODELIST:-?}"',
             'if [ -f "$STUDY/study.json" ]; then',
             '  set -- resume "$STUDY"',
             "else",
             f"  set -- {' '.join(q(part) for part in sweep)}",
             "fi"]
    if job.nodes > 1:
        lines += _cluster_lines(job)
    lines += ['"$PYTHON" "$LAUNCH" "$@" &',
              "DRIVER=$!",
              "STOPPING=0",
              "# the time limit is near: stop the driver as Ctrl-C does (every trial keeps its checkpoint)",
              "trap 'STOPPING=1; kill -INT \"$DRIVER\" 2>/dev/null' TERM",
              "while true; do",
              '  wait "$DRIVER"; CODE=$?',
              '  kill -0 "$DRIVER" 2>/dev/null || break',
              "done"]
    if job.nodes > 1:
        lines += ['"$RAY" stop --force >/dev/null 2>&1', 'kill "$WORKERS" 2>/dev/null; wait "$WORKERS" 2>/dev/null']
    lines += ['if [ "$STOPPING" = 1 ]; then',
              '  echo "fakd: stopped before the time limit (exit $CODE); requeueing job $SLURM_JOB_ID to resume it"',
              '  scontrol requeue "$SLURM_JOB_ID"',
              "  exit 0",
              "fi",
              'echo "fakd: the driver ended with exit $CODE"',
              'exit "$CODE"']
    return "\n".join(lines) + "\n"


def _cluster_lines(job: Job) -> list[str]:
    """Start a Ray head here and a worker on each other node; wait (bounded) until all have joined."""
    return [
        'RAY="$(dirname "$PYTHON")/ray"',
        'RAY_TMP="${SLURM_TMPDIR:-/tmp}/fakd-ray-${SLURM_JOB_ID}"  # node-local: Ray\'s sockets and logs',
        'HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        'HEAD_IP=$(srun --nodes=1 --ntasks=1 -w "$HEAD_NODE" hostname -i | awk \'{print $1}\')',
        f'ADDRESS="$HEAD_IP:{RAY_PORT}"',
        f'"$RAY" start --head --node-ip-address="$HEAD_IP" --port={RAY_PORT} --temp-dir="$RAY_TMP" '
        "--disable-usage-stats >/dev/null || { echo \"fakd: the Ray head did not start\"; exit 1; }",
        f'srun --nodes={job.nodes - 1} --ntasks={job.nodes - 1} --exclude="$HEAD_NODE" '
        '"$RAY" start --address="$ADDRESS" --temp-dir="$RAY_TMP" --block --disable-usage-stats &',
        "WORKERS=$!",
        f"DEADLINE=$((SECONDS + ${{FAKD_JOIN_TIMEOUT_S:-{JOIN_TIMEOUT_S}}}))",
        f'until [ "$("$PYTHON" -c \'import ray, sys; ray.init(address=sys.argv[1], logging_level="ERROR"); '
        f'print(sum(n["Alive"] for n in ray.nodes()))\' "$ADDRESS" 2>/dev/null)" = "{job.nodes}" ]; do',
        '  if [ "$SECONDS" -ge "$DEADLINE" ]; then',
        f'    echo "fakd: not all {job.nodes} nodes joined the Ray cluster within ${{FAKD_JOIN_TIMEOUT_S:-'
        f'{JOIN_TIMEOUT_S}}} s; stopping"',
        '    "$RAY" stop --force >/dev/null 2>&1; kill "$WORKERS" 2>/dev/null; exit 1',
        "  fi",
        '  LEFT=$((DEADLINE - SECONDS))  # poll every 5 s, and once more at the deadline, not up to 5 s after it',
        "  sleep $((LEFT < 1 ? 1 : (LEFT < 5 ? LEFT : 5)))",
        "done",
        'set -- "$@" --address "$ADDRESS"',
    ]

