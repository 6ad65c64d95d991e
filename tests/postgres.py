"""A private PostgreSQL cluster for the test suite (``TURBO_TEST_DATABASE=postgres``).

Started the way the suite starts its redis-server: ``initdb`` into a temporary directory,
``pg_ctl start`` on a free port on 127.0.0.1 (its socket in that directory, no systemd),
trust authentication for the ``postgres`` superuser, and stopped (directory removed) at the
end of the session. As root the cluster runs as the ``postgres`` OS user (``runuser``).
Plain Python: no pytest, no Django settings.

The binaries: ``TURBO_TEST_PG_BIN`` if set, else ``pg_ctl`` on PATH, else the newest
``/usr/lib/postgresql/*/bin`` (Debian and Ubuntu keep them there).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

USER = "postgres"


def bin_dir() -> Path:
    configured = os.environ.get("TURBO_TEST_PG_BIN")
    if configured:
        return Path(configured)
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).resolve().parent  # (Debian links a few into /usr/local/bin)
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    if not found:
        raise RuntimeError(
            "PostgreSQL is not installed (apt-get install postgresql), or set TURBO_TEST_PG_BIN"
        )
    return Path(found[-1]).parent


def url(port: int, name: str, host: str = "127.0.0.1") -> str:
    return f"postgres://{USER}@{host}:{port}/{name}"


class Cluster:
    """A cluster in a temporary directory, listening on 127.0.0.1:``port``."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.bin = bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="turbo_tasks_pg_"))
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.started = False

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        # PostgreSQL refuses to run as root: drop to the postgres OS user then.
        prefix = ["runuser", "-u", USER, "--"] if os.geteuid() == 0 else []
        return subprocess.run(
            [*prefix, *args], cwd=self.root, capture_output=True, text=True, check=False
        )

    def _check(self, *args: str) -> None:
        done = self._run(*args)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed:\n{done.stdout}{done.stderr}{self.log()}")

    def start(self) -> Cluster:
        if os.geteuid() == 0:
            shutil.chown(self.root, USER, USER)
        self._check(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", USER,
            "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync",
        )  # fmt: skip
        options = " ".join(
            [
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.root}",
                # A throw-away cluster: durability costs time and buys nothing.
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off",
                "-c max_connections=200",
            ]
        )
        self._check(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log_path),
            "-o", options, "-w", "-t", "60", "start",
        )  # fmt: skip
        self.started = True
        return self

    def create_database(self, name: str) -> None:
        self._check(
            str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, name
        )

    def url(self, name: str) -> str:
        return url(self.port, name)

    def stop(self) -> None:
        """Stop the server (fast shutdown: open sessions are ended) and remove its files."""
        try:
            if self.started:
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop")
                self.started = False
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


def start(port: int, databases: Sequence[str] = ()) -> Cluster:
    """Start a cluster on ``port`` and create ``databases`` in it."""
    cluster = Cluster(port).start()
    try:
        for name in databases:
            cluster.create_database(name)
    except Exception:
        cluster.stop()
        raise
    return cluster
