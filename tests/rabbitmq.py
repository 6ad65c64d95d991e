"""A private RabbitMQ node for the test suite (tests/test_rabbitmq.py).

Debian's ``rabbitmq-server`` installs without starting (policy-rc.d), and its service would
be shared by everyone on the machine. We start a node of our own instead, as the suite
starts its redis-server: ``/usr/lib/rabbitmq/bin/rabbitmq-server`` as root, its node name,
AMQP port, distribution port, epmd port, data, logs, plugins file and ``HOME`` (the Erlang
cookie) all private, on free ports and in a temporary directory. ``guest``/``guest`` works
on loopback. Stopping it takes ``rabbitmqctl stop`` with the same environment, then the
``epmd`` the node started on its ``ERL_EPMD_PORT``: epmd daemonizes into a session of its
own, so only its port finds it.
Plain Python: no pytest, no Django settings.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import amqp
import pytest

from scripts.procs import Process, free_port, wait_for

BIN_DIR = Path("/usr/lib/rabbitmq/bin")
SERVER = BIN_DIR / "rabbitmq-server"
CTL = BIN_DIR / "rabbitmqctl"
MISSING = (
    f"rabbitmq-server is not installed ({SERVER} is missing): "
    "scripts/system-packages.sh rabbitmq, or apt-get install rabbitmq-server"
)


def installed() -> bool:
    return os.access(SERVER, os.X_OK) and os.access(CTL, os.X_OK)


def require() -> None:
    """Skip a test that needs RabbitMQ where it is missing, but fail in CI: .ci/run
    installs it, and a skip there would hide a gap."""
    if not installed():
        if os.environ.get("CI"):
            pytest.fail(MISSING)
        pytest.skip(MISSING)


def _free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


class Node:
    """A RabbitMQ node listening on 127.0.0.1:``port``; ``url`` is its Celery broker URL."""

    def __init__(self, name: str = "turbo_tasks") -> None:
        self.port, self.dist_port, self.epmd_port = _free_ports(3)
        self.root = Path(tempfile.mkdtemp(prefix="turbo_tasks_rabbitmq_"))
        (self.root / "home").mkdir()
        plugins = self.root / "enabled_plugins"
        plugins.write_text("[].\n")  # no management plugin: nothing else to listen
        self.nodename = f"{name}_{self.port}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        self.env = dict(
            os.environ,
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.root / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.root / "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(plugins),
            ERL_EPMD_PORT=str(self.epmd_port),
            HOME=str(self.root / "home"),
        )
        self.server: Process | None = None

    def start(self, timeout: float = 90) -> None:
        """Start the node; return once it accepts an AMQP connection (~8 s)."""
        if not installed():
            raise RuntimeError(MISSING)
        self.server = Process(f"rabbitmq-server-{self.port}", [str(SERVER)], self.env)
        try:
            wait_for(self._accepts_amqp, timeout, f"RabbitMQ to accept AMQP on {self.port}")
        except (TimeoutError, RuntimeError) as exc:
            log = self.log()
            self.stop()
            raise RuntimeError(
                f"RabbitMQ node {self.nodename} did not start: {exc}\n{log}"
            ) from None

    def connect(self, timeout: float = 5) -> amqp.Connection:
        """An open py-amqp connection as guest (the client kombu's ``amqp://`` uses)."""
        connection = amqp.Connection(
            f"127.0.0.1:{self.port}", userid="guest", password="guest", connect_timeout=timeout
        )
        try:
            connection.connect()
        except amqp.AMQPError:  # a refusal during the handshake leaves the socket open
            connection.collect()
            raise
        return connection

    def _accepts_amqp(self) -> bool:
        assert self.server is not None
        if not self.server.alive():
            raise RuntimeError(f"rabbitmq-server exited with {self.server.proc.returncode}")
        try:
            self.connect(timeout=2).close()
        except (OSError, amqp.AMQPError):  # not listening yet, or still booting
            return False
        return True

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """Run ``rabbitmqctl`` against this node; return its output."""
        done = subprocess.run(
            [str(CTL), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def stop(self) -> None:
        """``rabbitmqctl stop``, then our epmd; the directory goes too. Safe to call twice."""
        server, self.server = self.server, None
        if server is not None:
            try:
                if server.alive():
                    self.ctl("stop")
                    wait_for(lambda: not server.alive(), 60, "the RabbitMQ node to stop")
            except (RuntimeError, TimeoutError, subprocess.TimeoutExpired):
                pass  # the group is killed below
            finally:
                server.stop()
        for pid in _listening_pids(self.epmd_port, "epmd"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            wait_for(lambda: not _listening_pids(self.epmd_port, "epmd"), 10, "epmd to stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self, chars: int = 4000) -> str:
        text = self.server.log(chars) if self.server else ""
        for path in sorted((self.root / "log").glob("*.log")):
            with contextlib.suppress(OSError):
                text += f"\n--- {path.name}\n" + path.read_text(errors="replace")[-chars:]
        return text


def _listening_pids(port: int, command: str) -> set[int]:
    """Pids of the processes named ``command`` with a TCP socket listening on ``port``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            next(lines)  # the header
            for line in lines:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    inodes.add(f"socket:[{inode}]")
    pids = set()
    if not inodes:
        return pids
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if Path(entry.path, "comm").read_text().strip() != command:
                continue
            fds = os.listdir(Path(entry.path, "fd"))
            if any(os.readlink(Path(entry.path, "fd", fd)) in inodes for fd in fds):
                pids.add(int(entry.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return pids
