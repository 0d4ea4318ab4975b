"""`launch.py slurm` against a real one-node Slurm (tests/slurm.py): a study that runs to its end through the
time-limit signal and a requeue; and every refusal, before anything is written or submitted."""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from conftest import searched_spec, wait_for, write_spec
from slurm import slurm_cluster, unavailable
from test_study_resume import EVAL_EVERY, ITERS, finished_and_running, results

from fakd.cli import main
from fakd.results import StudyDir, open_study_dir, read_trials
from fakd.slurm import ROOT, Job, render_script


def job_field(job: str, name: str, env: dict[str, str]) -> str:
    shown = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True).stdout
    match = re.search(rf"\b{name}=(\S*)", shown)
    return match[1] if match else ""


def slurm_story(job: str, env: dict[str, str]) -> str:
    """The job's record and the end of the daemons' logs, for a failure message."""
    shown = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True).stdout
    root = Path(env["SLURM_CONF"]).parent
    logs = "".join(f"\n--- {name}.log\n" + (root / f"{name}.log").read_text(errors="replace")[-3000:]
                   for name in ("slurmctld", "slurmd") if (root / f"{name}.log").is_file())
    return f"\n--- scontrol show job {job}\n{shown}{logs}"


@pytest.fixture(scope="module")
def slurm_env():
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    with slurm_cluster() as env:
        yield env


@pytest.mark.driver
@pytest.mark.slow
def test_a_study_runs_to_its_end_through_the_time_limit_signal_and_a_requeue(slurm_env, tmp_path, monkeypatch,
                                                                             capsys, given_teacher):
    """The job's batch shell gets the time-limit signal in the middle of the search (`scancel --batch
    --signal=TERM`, as `--signal=B:TERM@grace` sends it): the driver stops as on Ctrl-C, the job requeues itself,
    its second run resumes the study, and the study finishes with every trial run once, none from scratch."""
    for name, value in slurm_env.items():
        monkeypatch.setenv(name, value)
    raw = searched_spec(["baseline", "kd"], num_samples=2, max_concurrent=1, scheduler="none", retrain_seeds=1)
    raw["train"].update(iters=ITERS, eval_every=EVAL_EVERY)
    raw["teacher"]["checkpoint"] = str(given_teacher)
    spec = write_spec(tmp_path, raw)
    storage = tmp_path / "studies"
    study_dir = storage / "tiny"
    assert main(["slurm", str(spec), "--storage", str(storage), "--nodes", "1", "--time", "00:30:00",
                 "--grace", "60", "--allow-local", "--submit"]) == 0
    job = capsys.readouterr().out.strip().splitlines()[-1]
    log = study_dir / "slurm" / f"job-{job}.out"
    try:
        wait_for(lambda: finished_and_running(study_dir), 400, "one finished and one running search trial")
        subprocess.run(["scancel", "--batch", "--signal=TERM", job], check=True, env=slurm_env)
        # a requeued job waits AuthInfo's cred_expire (10 s here) before it starts again
        wait_for(lambda: job_field(job, "Restarts", slurm_env) == "1", 180, "the job to requeue itself")
        wait_for(lambda: job_field(job, "JobState", slurm_env) in ("COMPLETED", "FAILED", "CANCELLED"), 600,
                 "the requeued job to finish")
    finally:
        output = log.read_text(errors="replace") if log.is_file() else "(no job output)"
    assert job_field(job, "JobState", slurm_env) == "COMPLETED", output[-4000:] + slurm_story(job, slurm_env)
    assert job_field(job, "ExitCode", slurm_env) == "0:0", output[-4000:]
    assert "stopped by SIGINT" in output and f"requeueing job {job} to resume it" in output, output[-4000:]
    assert f"resuming study {study_dir}" in output, output[-4000:]
    study = open_study_dir(study_dir)
    records = read_trials(study)
    assert sorted((r.phase, r.arm, r.state) for r in records) == sorted(
        [("search", arm, "COMPLETE") for arm in ("baseline", "kd") for _ in range(2)]
        + [("retrain", arm, "COMPLETE") for arm in ("baseline", "kd")]), output[-4000:]
    for record in records:  # every evaluation once: a stopped trial continued from its checkpoint
        iterations = [row["iteration"] for row in results(study_dir / "trials" / record.key)]
        assert iterations == list(range(EVAL_EVERY, ITERS + 1, EVAL_EVERY)), (record.key, iterations)
    assert json.loads((study_dir / "study.json").read_text()).get("retrain_finished")
    assert main(["export", str(study_dir), "--format", "csv"]) == 0


def test_bad_input_is_one_line_before_anything_is_written_or_submitted(tmp_path, monkeypatch, capsys):
    spec = write_spec(tmp_path)
    storage = tmp_path / "studies"
    base = ["slurm", str(spec), "--storage", str(storage), "--time", "01:00:00"]
    no_sbatch = tmp_path / "bin"
    no_sbatch.mkdir()
    cases = [
        (["--nodes", "0"], "--nodes: --nodes 0: a job needs at least one node"),
        (["--nodes", "1", "--time", "4h", "--allow-local"], "'4h' is not a time limit; accepted: HH:MM:SS"),
        (["--nodes", "1", "--grace", "3600", "--allow-local"], "is not shorter than the time limit"),
        (["--nodes", "1"], "is not on storage every node sees: it lies under /tmp"),
        (["--nodes", "2", "--allow-local"], "a job of 2 nodes needs storage every node sees"),
        (["--nodes", "1", "--allow-local", "--set", "resources.gpu=1"], "--gpus-per-node 0 is fewer than one trial"),
        (["--nodes", "1", "--allow-local", "--set", "train.iters=-5"], "train.iters"),
        (["--nodes", "1", "--allow-local", "--name", "../x"], "is not a study name"),
    ]
    for args, expected in cases:
        assert main([*base, *args]) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err, (args, err)
    monkeypatch.setenv("PATH", str(no_sbatch))
    assert main([*base, "--nodes", "1", "--allow-local", "--submit"]) == 2
    assert "--submit needs Slurm's sbatch, which is not on PATH" in capsys.readouterr().err
    assert not storage.exists(), "a refused job wrote something"


def test_the_script_resumes_an_existing_study_and_passes_every_override(tmp_path, capsys):
    spec = write_spec(tmp_path)
    storage = tmp_path / "studies"
    assert main(["slurm", str(spec), "--storage", str(storage), "--nodes", "1", "--time", "1-02:00:00",
                 "--cpus-per-task", "8", "--mem", "64G", "--partition", "gpu", "--account", "lab",
                 "--gpus-per-node", "4", "--grace", "600", "--allow-local", "--set", "train.lr=0.02",
                 "--name", "run"]) == 0
    script = storage / "run" / "slurm" / "job.sbatch"
    assert capsys.readouterr().out.splitlines()[0] == f"wrote {script}"
    text = script.read_text()
    for directive in ("--nodes=1", "--time=1-02:00:00", "--signal=B:TERM@600", "--requeue", "--cpus-per-task=8",
                      "--mem=64G", "--partition=gpu", "--account=lab", "--gpus-per-node=4",
                      f"--output={storage / 'run' / 'slurm' / 'job-%j.out'}"):
        assert f"#SBATCH {directive}\n" in text, directive
    assert f"set -- sweep {spec} --storage {storage} --name run --set train.lr=0.02\n" in text
    assert 'if [ -f "$STUDY/study.json" ]; then\n  set -- resume "$STUDY"' in text
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0  # valid bash
    assert os.access(script, os.X_OK)
    assert main(["sweep", str(spec), "--storage", str(storage), "--name", "run", "--set", "train.iters=-1"]) == 2
    assert "train.iters" in capsys.readouterr().err  # the slurm folder alone does not make the study exist
    assert sorted(p.name for p in (storage / "run").iterdir()) == ["slurm"]



FAKE = {  # each fake tool appends its arguments to $CALLS, one call per line
    "scontrol": 'echo "scontrol $*" >> "$CALLS"\n'
                'if [ "$1 $2" = "show hostnames" ]; then printf "node1\\nnode2\\nnode3\\n"; fi',
    "srun": 'echo "srun $*" >> "$CALLS"\n'
            'case "$*" in *hostname*) echo 10.0.0.1;; *--block*) exec sleep 300;; esac',
    "ray": 'echo "ray $*" >> "$CALLS"',
    # the interpreter: the join check prints the nodes alive ($JOINED); the driver records itself and ends
    "python": 'if [ "$1" = "-c" ]; then echo "${JOINED}"; else echo "driver $*" >> "$CALLS"; fi',
}


def fake_tools(tmp_path: Path) -> Path:
    tools = tmp_path / "bin"
    tools.mkdir()
    for name, body in FAKE.items():
        (tools / name).write_text(f"#!/bin/bash\n{body}\n")
        (tools / name).chmod(0o755)
    return tools


@pytest.mark.parametrize("joined", [3, 2])
def test_the_multi_node_part_starts_a_head_and_workers_and_waits_for_them(tmp_path, joined):
    """This machine is one node: the node list, `srun`, `scontrol`, `ray` and the interpreter are faked at the shell
    level (FAKE above), and the script's own logic runs for real under bash. With 2 of 3 nodes joined, the bounded
    wait gives up with a line and exit 1, and stops what it started."""
    tools = fake_tools(tmp_path)
    job = Job(tmp_path / "spec.yaml", tmp_path / "studies", "tiny", ["train.lr=0.02"], nodes=3, time_s=3600)
    script = render_script(job, StudyDir(tmp_path / "studies" / "tiny"))
    script = re.sub(r"(?m)^PYTHON=.*$", f"PYTHON={tools / 'python'}", script)
    calls = tmp_path / "calls"
    env = {**os.environ, "PATH": f"{tools}:{os.environ['PATH']}", "CALLS": str(calls), "JOINED": str(joined),
           "SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "node[1-3]", "SLURM_TMPDIR": "/local/scratch",
           "FAKD_JOIN_TIMEOUT_S": "1"}
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    lines = calls.read_text().splitlines()
    assert lines[0] == "scontrol show hostnames node[1-3]"
    assert lines[1] == "srun --nodes=1 --ntasks=1 -w node1 hostname -i"
    assert lines[2] == ("ray start --head --node-ip-address=10.0.0.1 --port=6379 "
                        "--temp-dir=/local/scratch/fakd-ray-42 --disable-usage-stats")
    workers = (f"srun --nodes=2 --ntasks=2 --exclude=node1 {tools / 'ray'} start --address=10.0.0.1:6379 "
               "--temp-dir=/local/scratch/fakd-ray-42 --block --disable-usage-stats")
    assert workers in lines[3:], lines  # started in the background: its line may come after the driver's
    after = [line for line in lines[3:] if line != workers]
    if joined == 3:
        assert done.returncode == 0, done.stdout + done.stderr
        assert after == [f"driver {ROOT / 'launch.py'} sweep {job.spec} --storage {job.storage} --name tiny "
                         "--set train.lr=0.02 --address 10.0.0.1:6379", "ray stop --force"], lines
        assert "the driver ended with exit 0" in done.stdout
    else:
        assert done.returncode == 1 and not any(line.startswith("driver") for line in lines)
        assert "not all 3 nodes joined the Ray cluster within 1 s; stopping" in done.stdout
        assert after == ["ray stop --force"], lines
