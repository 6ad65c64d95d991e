"""``scripts/demo.sh``, the command ``make demo`` wraps, run as a new user would: it starts
its own Redis when none answers, serves the site and Flower, and Ctrl-C (SIGINT to its
process group) stops every process it started."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import LOG_DIR, ROOT, wait_for
from tests.stack import HttpClient, example_env, free_port, port_answers


def _stat(pid: int) -> tuple[int, int, str] | None:
    """(ppid, pgid, state) of a live process, None when it is gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # the name may contain spaces
    state, ppid, pgid = fields[0], int(fields[1]), int(fields[2])
    return None if state in ("Z", "X") else (ppid, pgid, state)


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        stat = _stat(pid)
        if stat is not None:
            children.setdefault(stat[0], []).append(pid)
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _in_group(pgid: int) -> set[int]:
    return {pid for pid in _all_pids() if (stat := _stat(pid)) is not None and stat[1] == pgid}


@dataclass
class Demo:
    proc: subprocess.Popen[bytes]
    log_path: Path
    seen: set[int] = field(default_factory=set)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def banner_port(self, what: str) -> int:
        match = re.search(rf"{what}: +http://127\.0\.0\.1:(\d+)/", self.log())
        assert match, f"no {what} URL printed:\n{self.log()}"
        return int(match.group(1))

    def processes(self) -> set[int]:
        """Every live process the demo started (remembered, so orphans are found too)."""
        self.seen |= _descendants(self.proc.pid)
        return {pid for pid in self.seen if _stat(pid) is not None} | _in_group(self.proc.pid)

    def kill(self) -> None:
        """Kill whatever is left (only needed when a test failed half-way)."""
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(10)


@pytest.fixture
def start_demo(tmp_path: Path) -> Iterator[Callable[..., Demo]]:
    demos: list[Demo] = []

    def start(**env: str) -> Demo:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        log_path = LOG_DIR / f"demo-{len(demos)}.log"
        full_env = example_env(
            tmp_path / "demo.sqlite3", env.pop("REDIS_URL"), HOST="127.0.0.1", **env
        )
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                ["bash", "scripts/demo.sh"],
                cwd=ROOT,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, as a terminal gives it
            )
        demos.append(Demo(proc, log_path))
        return demos[-1]

    try:
        yield start
    finally:
        for demo in demos:
            if demo.processes():
                demo.kill()


def _wait_until_up(demo: Demo, site: HttpClient, flower: HttpClient) -> None:
    def up() -> bool:
        assert demo.proc.poll() is None, "demo.sh exited:\n" + demo.log()
        demo.processes()
        return site.answers("/accounts/login/") and flower.answers("/")

    wait_for(up, 120, "the demo's site and Flower")


def _ctrl_c(demo: Demo) -> None:
    """SIGINT to the demo's process group, as Ctrl-C in its terminal; all must exit."""
    started = demo.processes()
    os.killpg(demo.proc.pid, signal.SIGINT)
    demo.proc.wait(30)
    try:
        wait_for(lambda: not demo.processes(), 30, "every process of the demo to exit")
    except AssertionError:
        raise AssertionError(
            f"still running after Ctrl-C: {demo.processes()} of {started}\n{demo.log()[-3000:]}"
        ) from None


def test_demo_serves_the_site_and_flower_and_ctrl_c_stops_everything(start_demo) -> None:
    ports = {"PORT": free_port(), "FLOWER_PORT": free_port(), "REDIS": free_port()}
    assert len(set(ports.values())) == 3
    demo = start_demo(
        PORT=str(ports["PORT"]),
        FLOWER_PORT=str(ports["FLOWER_PORT"]),
        REDIS_URL=f"redis://127.0.0.1:{ports['REDIS']}/0",  # nothing there: it starts one
    )
    site = HttpClient(f"http://127.0.0.1:{ports['PORT']}")
    flower = HttpClient(f"http://127.0.0.1:{ports['FLOWER_PORT']}")
    _wait_until_up(demo, site, flower)
    assert demo.banner_port("Site") == ports["PORT"]
    assert demo.banner_port("Flower") == ports["FLOWER_PORT"]
    assert re.search(r"alice .*\n.*bob .*\n.*carol ", demo.log()), "the logins are printed"
    assert port_answers(ports["REDIS"]), "the demo started its own Redis on REDIS_URL's port"

    # A seeded user logs in and posts; the demo's worker delivers the broadcast.
    site.login("alice")
    room = re.search(r'href="(/rooms/\d+/)">general<', site.get("/").body)
    assert room
    posted = site.post_form(room.group(1) + "messages/", {"text": "hi from the demo test"}, "/")
    assert posted.status == 303
    wait_for(
        lambda: re.search(r"Task turbo_tasks\.deliver\[[^\]]+\] succeeded", demo.log()),
        60,
        "the demo's worker to deliver the broadcast",
    )
    assert len(demo.processes()) >= 4, "web, worker, flower and redis"

    _ctrl_c(demo)
    for port in ports.values():
        assert not port_answers(port), f"port {port} still answers after Ctrl-C"


def test_demo_moves_off_busy_ports(start_demo) -> None:
    # Something that is not Redis listens on REDIS_URL's port, and the wanted web and Flower
    # ports are taken: the demo picks free ports and a Redis of its own, and says so.
    with contextlib.ExitStack() as stack:
        busy = []
        for _ in range(3):
            listener = stack.enter_context(socket.socket())
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            busy.append(listener.getsockname()[1])
        web_port, flower_port, not_redis = busy
        demo = start_demo(
            PORT=str(web_port),
            FLOWER_PORT=str(flower_port),
            REDIS_URL=f"redis://127.0.0.1:{not_redis}/0",
        )
        wait_for(lambda: "Stop everything with Ctrl-C" in demo.log(), 120, "the demo's banner")
        site_port, flower_port_used = demo.banner_port("Site"), demo.banner_port("Flower")
        redis_url = re.search(r"Redis: +redis://127\.0\.0\.1:(\d+)/0", demo.log())
        assert redis_url, demo.log()
        assert {site_port, flower_port_used, int(redis_url.group(1))}.isdisjoint(busy)
        assert f"port {web_port} is busy" in demo.log()
        assert f"port {not_redis} is taken by something that is not Redis" in demo.log()
        _wait_until_up(
            demo,
            HttpClient(f"http://127.0.0.1:{site_port}"),
            HttpClient(f"http://127.0.0.1:{flower_port_used}"),
        )
        assert port_answers(int(redis_url.group(1)))
        _ctrl_c(demo)
