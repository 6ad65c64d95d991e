"""Process helpers shared by the test suite (tests/helpers.py), the benchmark (bench/) and
the chaos run (scripts/chaos.py): free ports, polling waits and subprocesses in their own
session. Plain Python: no pytest, no Django settings."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LOG_DIR = ROOT / "artifacts" / "logs"


def wait_for(
    condition: Callable[[], Any],
    timeout: float = 30.0,
    what: str = "condition",
    error: type[Exception] = TimeoutError,
) -> Any:
    """Poll ``condition`` until it returns something truthy; raise ``error`` after
    ``timeout`` s."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise error(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


class Process:
    """A subprocess in its own session (so its children stop with it), its output appended
    to ``<log_dir>/<name>.log``. ``start()`` runs it again after ``stop()``."""

    def __init__(
        self,
        name: str,
        args: list[str],
        env: dict[str, str] | None = None,
        log_dir: Path = LOG_DIR,
        log_name: str | None = None,
        cwd: Path = ROOT,
    ) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.cwd = cwd
        self.name = name
        self.args = args
        self.env = dict(os.environ) if env is None else env
        self.log_path = log_dir / (log_name or f"{name}.log")
        self.proc: subprocess.Popen[bytes]
        self.start()

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.args,
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the process and everything it started."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signum)

    def kill(self, timeout: float = 30) -> None:
        """SIGKILL the group (a worker and its pool children, at once)."""
        self.signal(signal.SIGKILL)
        self.proc.wait(timeout)

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM the group we made for it and wait ``timeout`` seconds; then SIGKILL
        whatever is left of the group (pool children, or the leader if it hung)."""
        if self.alive():
            self.signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        self.signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout)

    def log(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""
