"""A throwaway PostgreSQL server for tests: its own data directory, port and socket, trust auth on loopback.

`postgres_server()` is a context manager that yields a SQLAlchemy URL and always stops the server and removes its
directory on exit. The server runs as an unprivileged user: `postgres` (the system user Debian's package creates)
when the tests run as root, since PostgreSQL refuses to run as root, and the current user otherwise.
"""

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin"
MISSING = f"PostgreSQL server binaries not found under {DEBIAN_BIN_GLOB} or on PATH: apt-get install postgresql"
DRIVER = "postgresql+psycopg"  # SQLAlchemy dialect + driver (psycopg 3)
SUPERUSER = "postgres"
DATABASE = "fakd_test"
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30


def find_bindir() -> Path | None:
    """The directory holding `initdb` and `pg_ctl`: Debian's newest /usr/lib/postgresql/<version>/bin, else PATH."""

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))

    def complete(path: Path) -> bool:
        return all(os.access(path / tool, os.X_OK) for tool in ("initdb", "pg_ctl"))

    debian = sorted((p for p in Path("/").glob(DEBIAN_BIN_GLOB.lstrip("/")) if complete(p)), key=version)
    if debian:
        return debian[-1]
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path and complete(Path(on_path).parent) else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One PostgreSQL server under `root`, its commands run as `user` (None: the current user)."""

    def __init__(self, bindir: Path, root: Path, user: str | None):
        self.bindir, self.root, self.user = bindir, root, user
        self.data, self.log = root / "data", root / "server.log"
        self.port = 0

    def run(self, tool: str, *args: str, timeout: float = START_TIMEOUT_S + 30) -> subprocess.CompletedProcess:
        """Run a PostgreSQL tool as the server's user; raise with its output (and the server log) on failure."""
        kwargs: dict[str, Any] = {}
        if self.user is not None:  # drop root: uid, gid and supplementary groups
            entry = pwd.getpwnam(self.user)
            kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}  # no stray PGHOST, PGPORT, ...
        done = subprocess.run([str(self.bindir / tool), *args], cwd=self.root, env=env, capture_output=True,
                              text=True, timeout=timeout, check=False, **kwargs)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} {' '.join(args)} exited {done.returncode}\n{done.stdout}{done.stderr}"
                               + (f"\nserver log:\n{log}" if log else ""))
        return done

    def init(self) -> None:
        self.run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "--no-locale", "-E", "UTF8",
                 "--no-sync")

    def start(self, attempts: int = 3) -> None:
        """Start on a free loopback port; retry with another port if one was taken between probe and bind."""
        for attempt in range(1, attempts + 1):
            self.port = free_port()
            settings = {
                "listen_addresses": "'127.0.0.1'",
                "port": str(self.port),
                "unix_socket_directories": f"'{self.root}'",
                "fsync": "off",  # a throwaway cluster: durability only costs time
                "synchronous_commit": "off",
                "full_page_writes": "off",
            }
            (self.data / "postgresql.auto.conf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
            try:
                self.run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-w", "-t",
                         str(START_TIMEOUT_S))
                return
            except RuntimeError:
                if attempt == attempts or "already in use" not in self.log.read_text(errors="replace"):
                    raise

    def create_database(self, name: str) -> None:
        self.run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, name, timeout=60)

    def url(self, database: str) -> str:
        return f"{DRIVER}://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        """Fast shutdown (disconnects clients), then immediate, then SIGKILL of the postmaster we started."""
        pidfile = self.data / "postmaster.pid"
        for mode in ("fast", "immediate"):
            if not pidfile.exists():
                return
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self.run("pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w", "-t", str(STOP_TIMEOUT_S),
                         timeout=STOP_TIMEOUT_S + 10)
                return
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(pidfile.read_text().split()[0])
            if str(self.data) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                os.kill(pid, signal.SIGKILL)


def server_user() -> str | None:
    """The user the server runs as: None (the current user) unless we are root, then `postgres`."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError("running as root but there is no `postgres` system user to run the server as "
                           "(Debian's postgresql package creates it)") from None
    return "postgres"


def world_searchable(path: Path) -> bool:
    return all(p.stat().st_mode & stat.S_IXOTH for p in (path, *path.parents))


def make_root(user: str | None) -> Path:
    """A temporary directory the server's user owns; short, since the unix socket path is limited to ~100 bytes."""
    parent = Path(tempfile.gettempdir())
    if len(str(parent)) > 40 or (user is not None and not world_searchable(parent)):
        parent = Path("/tmp")
    root = Path(tempfile.mkdtemp(prefix="fakd-pg-", dir=parent))
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    return root


@contextlib.contextmanager
def postgres_server(bindir: Path, database: str = DATABASE) -> Iterator[str]:
    """Start a server from `bindir`, create `database`, yield its SQLAlchemy URL; stop and clean up on exit."""
    user = server_user()
    root = make_root(user)
    server = Server(bindir, root, user)
    try:
        server.init()
        server.start()
        server.create_database(database)
        yield server.url(database)
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)
