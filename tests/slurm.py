"""A throwaway one-node Slurm cluster for tests: Debian's munged, slurmctld and slurmd in a temporary directory.

`slurm_cluster()` is a context manager that yields the environment a client needs (`SLURM_CONF`), and always stops
the daemons. One node with this machine's CPUs, on loopback; `proctrack/linuxproc`, `task/none`, no cgroups and no
accounting, so it starts in seconds. The daemons run as the current user, which must be root (slurmd starts jobs
as their owner).
"""

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol")
MISSING = "Slurm is not installed (Debian: slurmctld slurmd slurm-client munge)"
START_TIMEOUT_S = 60


def unavailable() -> str | None:
    """Why no cluster can be started here, or None."""
    absent = [name for name in DAEMONS if shutil.which(name) is None and not Path(f"/usr/sbin/{name}").exists()]
    if absent:
        return f"{MISSING}: no {', '.join(absent)}"
    if os.geteuid() != 0:
        return "slurmd must run as root to start jobs, and these tests do not"
    if not Path("/etc/munge/munge.key").is_file():
        return "munge has no key (/etc/munge/munge.key): reinstall the munge package"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


CONFIG = """ClusterName=fakdtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
AuthInfo=socket={root}/munge.socket,cred_expire=10
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=3600
KillWait=30
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


@contextlib.contextmanager
def slurm_cluster() -> Iterator[dict[str, str]]:
    root = Path(tempfile.mkdtemp(prefix="fakd-slurm-"))
    root.chmod(0o755)
    for folder in ("state", "spool"):
        (root / folder).mkdir()
    key = root / "munge.key"
    shutil.copyfile("/etc/munge/munge.key", key)
    key.chmod(0o600)
    host = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    conf.write_text(CONFIG.format(host=host, root=root, ctld_port=_free_port(), slurmd_port=_free_port(),
                                  cpus=os.cpu_count() or 1))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    try:
        subprocess.run([_binary("munged"), "--force", f"--socket={root}/munge.socket", f"--key-file={key}",
                        f"--log-file={root}/munged.log", f"--pid-file={root}/munged.pid",
                        f"--seed-file={root}/munged.seed"], check=True, capture_output=True, timeout=30)
        subprocess.run([_binary("slurmctld"), "-i", "-f", str(conf)], env=env, check=True, capture_output=True,
                       timeout=30)
        subprocess.run([_binary("slurmd"), "-f", str(conf), "-N", host], env=env, check=True, capture_output=True,
                       timeout=30)
        deadline = time.monotonic() + START_TIMEOUT_S
        while "idle" not in subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True,
                                           text=True).stdout:
            if time.monotonic() > deadline:
                logs = "".join((root / f"{name}.log").read_text(errors="replace")[-2000:]
                               for name in ("slurmctld", "slurmd") if (root / f"{name}.log").exists())
                raise RuntimeError(f"the Slurm node did not become idle in {START_TIMEOUT_S} s:\n{logs}")
            time.sleep(0.5)
        yield env
    finally:
        subprocess.run(["scancel", "--user", str(os.getuid())], env=env, capture_output=True, timeout=60, check=False)
        subprocess.run(["scontrol", "shutdown"], env=env, capture_output=True, timeout=60, check=False)
        for name in ("slurmd", "slurmctld", "munged"):
            with contextlib.suppress(OSError, ValueError):
                pid = int((root / f"{name}.pid").read_text())
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    os.kill(pid, 0)
                    if name == "munged":
                        os.kill(pid, 15)
                    time.sleep(0.2)
                os.kill(pid, 9)
        shutil.rmtree(root, ignore_errors=True)
