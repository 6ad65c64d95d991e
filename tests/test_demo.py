"""``scripts/demo.sh``, the command ``make demo`` wraps, run as a new user would: it starts
its own Redis when none answers, serves the site and Flower, and Ctrl-C (SIGINT to its
process group) stops every process it started. So does a supervisor's SIGTERM to the group
followed by its SIGKILL, with Redis up or gone, and a worker whose broker stopped answering
still stops in bounded time."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis as redis_py

from tests.helpers import LOG_DIR, ROOT, Process, free_port, wait_for
from tests.stack import HttpClient, example_env, port_answers
from worker.celery import SHUTDOWN_TIMEOUT


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


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return "?"


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

    def describe(self, pids: set[int]) -> str:
        return "\n".join(f"  {pid}: {_cmdline(pid)}" for pid in sorted(pids))

    def wait_until_all_stopped(self, timeout: float, after: str) -> None:
        try:
            wait_for(lambda: not self.processes(), timeout, f"every process to exit {after}")
        except AssertionError:
            raise AssertionError(
                f"still running {timeout:g}s {after}:\n{self.describe(self.processes())}\n"
                f"{self.log()[-3000:]}"
            ) from None

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


# A supervisor (systemd, a CI runner, `timeout -k`) stops the demo by signalling its process
# group: SIGTERM, then SIGKILL when its grace period is over.
SUPERVISOR_GRACE = 3.0


def _start_redis(name: str) -> tuple[Process, str]:
    """A redis-server on a free port, and its URL."""
    port = free_port()
    server = Process(
        f"{name}-{port}",
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
    )

    def answers() -> bool:
        with redis_py.Redis(port=port, socket_timeout=1) as client:
            try:
                return bool(client.ping())
            except redis_py.ConnectionError:
                return False

    try:
        wait_for(answers, 20, f"redis-server on port {port}")
    except AssertionError:
        _kill(server)
        raise
    return server, f"redis://127.0.0.1:{port}/0"


@pytest.fixture
def external_redis() -> Iterator[tuple[Process, str]]:
    """A Redis that answers when the demo starts (so it starts none), for a test to take away."""
    server, url = _start_redis("demo-external-redis")
    try:
        yield server, url
    finally:
        _kill(server)


def _kill(server: Process) -> None:
    assert server.proc is not None
    with contextlib.suppress(ProcessLookupError):
        server.proc.kill()  # SIGKILL: works on a stopped process too
    server.proc.wait(10)


def _start(start_demo: Callable[..., Demo], redis_url: str | None = None) -> Demo:
    ports = {"PORT": free_port(), "FLOWER_PORT": free_port()}
    demo = start_demo(
        PORT=str(ports["PORT"]),
        FLOWER_PORT=str(ports["FLOWER_PORT"]),
        # Nothing answers on a fresh port, so the demo starts a Redis of its own there.
        REDIS_URL=redis_url or f"redis://127.0.0.1:{free_port()}/0",
    )
    _wait_until_up(
        demo,
        HttpClient(f"http://127.0.0.1:{ports['PORT']}"),
        HttpClient(f"http://127.0.0.1:{ports['FLOWER_PORT']}"),
    )
    return demo


def _take_redis_away(demo: Demo, server: Process) -> None:
    """Kill the Redis the demo uses, and wait until it has been gone for a while: until the
    worker has failed to reconnect four times (2 + 4 + 6 s), so every process's periodic
    broker traffic (Flower's enable-events broadcast, every 5 s) has met the dead broker."""
    _kill(server)
    wait_for(
        lambda: re.search(r"Trying again in .*\(4/\d+\)", demo.log()),
        60,
        "the worker to fail to reconnect to the dead Redis four times",
    )


def _sigterm_then_sigkill(demo: Demo, grace: float | None) -> None:
    """Signal the demo's process group as a supervisor does (grace None: SIGKILL only)."""
    demo.processes()  # remember them all before any is orphaned
    if grace is not None:
        os.killpg(demo.proc.pid, signal.SIGTERM)
        time.sleep(grace)  # the scenario itself: the supervisor's grace period
    with contextlib.suppress(ProcessLookupError):  # the group may have exited in time
        os.killpg(demo.proc.pid, signal.SIGKILL)
    demo.proc.wait(10)


def _tcp_connections() -> list[tuple[int, int, int, int]]:
    """(local port, remote port, bytes received but unread, inode) of established sockets."""
    rows = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "01":  # established
            rows.append(
                (
                    int(fields[1].split(":")[1], 16),
                    int(fields[2].split(":")[1], 16),
                    int(fields[4].split(":")[1], 16),
                    int(fields[9]),
                )
            )
    return rows


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def _waits_on(pid: int, port: int) -> bool:
    """Whether process ``pid`` sent the server on ``port`` bytes that it has not read."""
    rows = _tcp_connections()
    inodes = _socket_inodes(pid)
    ours = {local for local, remote, _, inode in rows if remote == port and inode in inodes}
    return any(local == port and remote in ours and unread for local, remote, unread, _ in rows)


def _silence_redis(server: Process, url: str, worker: int) -> None:
    """Stop the Redis the demo uses without closing its sockets (a hung host, a partition),
    and wait until the worker has written to it in vain (an event heartbeat, every 2 s)."""
    assert server.proc is not None
    server.proc.send_signal(signal.SIGSTOP)
    port = urlsplit(url).port
    assert port is not None
    wait_for(lambda: _waits_on(worker, port), 30, "the worker to wait on the silent Redis")


def _worker_pid(demo: Demo) -> int:
    """The demo's Celery worker (its main process, not a pool process)."""
    workers = {p for p in demo.processes() if "celery -A worker worker" in _cmdline(p)}
    (main,) = [p for p in workers if (stat := _stat(p)) is not None and stat[0] not in workers]
    return main


@pytest.mark.parametrize(
    ("redis", "grace"),
    [("up", SUPERVISOR_GRACE), ("silent", SUPERVISOR_GRACE), ("up", None)],
    ids=["sigterm-sigkill", "sigterm-sigkill-redis-silent", "sigkill-only"],
)
def test_a_supervisor_signalling_the_process_group_leaves_no_process(
    start_demo: Callable[..., Demo],
    request: pytest.FixtureRequest,
    redis: str,
    grace: float | None,
) -> None:
    # honcho runs every Procfile line in a session of its own, so the group's signals reach
    # honcho alone. Whatever is still stopping when honcho is killed must die with it, not
    # run on as an orphan: with its Redis not answering, the worker's warm shutdown hangs.
    if redis == "silent":
        server, url = request.getfixturevalue("external_redis")
        demo = _start(start_demo, url)
        _silence_redis(server, url, _worker_pid(demo))
    else:
        demo = _start(start_demo)
    assert len(demo.processes()) >= 4, "web, worker, flower (and redis) are running"
    _sigterm_then_sigkill(demo, grace)
    demo.wait_until_all_stopped(5, "after the process group's SIGKILL")


@pytest.mark.parametrize("redis", ["own", "external"])
def test_a_sigterm_after_redis_died_stops_everything_on_its_own(
    start_demo: Callable[..., Demo], request: pytest.FixtureRequest, redis: str
) -> None:
    if redis == "external":
        # honcho does not notice this Redis going: the demo runs on without a broker.
        server, url = request.getfixturevalue("external_redis")
        demo = _start(start_demo, url)
        _take_redis_away(demo, server)
    else:
        # The demo's own redis-server dies; honcho stops the rest as soon as it sees that.
        demo = _start(start_demo)
        (redis_pid,) = [p for p in demo.processes() if _cmdline(p).startswith("redis-server")]
        os.kill(redis_pid, signal.SIGKILL)
    demo.processes()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(demo.proc.pid, signal.SIGTERM)
    demo.wait_until_all_stopped(15, "after SIGTERM with Redis gone")
    demo.proc.wait(10)
    # The site stopped by itself: honcho (5 s after the first exit) did not have to SIGKILL
    # it. The worker may need it while it waits for its tasks (its own deadline is
    # worker.celery.SHUTDOWN_TIMEOUT), and so may Flower when Redis died while it was still
    # starting (its first inspect retries the dead broker): bounded either way.
    killed = re.findall(r"sending SIGKILL to (\w+)", demo.log())
    assert set(killed) <= {"worker", "flower"}, demo.log()[-3000:]


def test_a_worker_whose_broker_stopped_answering_stops_in_bounded_time(tmp_path: Path) -> None:
    # The Procfile's worker on its own. Its Redis stops answering (a hung host, a partition):
    # the worker's broker writes then block, and some are retried forever, so its warm
    # shutdown used to hang (over a minute here) and further SIGTERMs did nothing.
    server, url = _start_redis("demo-silent-redis")
    worker = None
    try:
        worker = Process(
            f"demo-worker-silent-broker-{free_port()}",
            [
                *(sys.executable, "-m", "celery", "-A", "worker"),
                *("worker", "-Q", "turbo_tasks", "-l", "info"),  # as in the Procfile
            ],
            example_env(tmp_path / "worker.sqlite3", url),
        )
        wait_for(lambda: "ready." in worker.log_path.read_text(), 60, "the worker to start")
        assert server.proc is not None
        assert worker.proc is not None
        _silence_redis(server, url, worker.proc.pid)
        worker.proc.send_signal(signal.SIGTERM)
        try:
            worker.proc.wait(SHUTDOWN_TIMEOUT + 10)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the worker still runs {SHUTDOWN_TIMEOUT + 10:g}s after SIGTERM:\n{worker.log()}"
            ) from None
    finally:
        if worker is not None and worker.proc is not None and worker.proc.poll() is None:
            worker.proc.kill()
            worker.proc.wait(10)
        _kill(server)
