"""The channel-layer loop of a gevent or eventlet worker (``celery -P gevent``/``eventlet``).

Under these pools tasks are greenlets sharing one OS thread, and an asyncio loop running in
one of them would be seen by all the others: Django refuses their ORM calls then
(``SynchronousOnlyOperation``). So the process keeps one loop in a real OS thread of its
own; turbo_tasks.layers hands it the calls, and the waiting greenlet lets the others run.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib
import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

logger = logging.getLogger(__name__)

# turbo_tasks.layers takes both: a channel-layer call not finished within this is cancelled,
# and at most this many use a loop's connection pool at once (redis-py's holds 100).
TIMEOUT_SECONDS = 30
MAX_CONCURRENT_SENDS = 50

# A call the loop thread has not finished within TIMEOUT_SECONDS is cancelled there; its
# caller waits this much longer before giving up on the loop thread itself.
_GRACE_SECONDS = 5.0


def library() -> str | None:
    """``"gevent"`` or ``"eventlet"`` when that library has made this process's threads
    greenlets (Celery's ``-P gevent``/``-P eventlet`` patch before anything else is
    imported), else None. Looked up in sys.modules: this imports neither."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        return "gevent"
    patcher = sys.modules.get("eventlet.patcher")
    if patcher is not None and patcher.is_monkey_patched("thread"):
        return "eventlet"
    return None


def thread_primitives() -> tuple[Callable[..., Any], Callable[[], Any]]:
    """``(start_new_thread, allocate_lock)`` of the real ``_thread`` module: under gevent or
    eventlet the patched ones make greenlets and greenlet locks."""
    green = library()
    if green == "gevent":
        original = sys.modules["gevent.monkey"].get_original
        start, lock = original("_thread", ["start_new_thread", "allocate_lock"])
        return start, lock
    if green == "eventlet":
        thread = sys.modules["eventlet.patcher"].original("_thread")
        return thread.start_new_thread, thread.allocate_lock
    import _thread

    return _thread.start_new_thread, _thread.allocate_lock


class LoopThread:
    """This process's channel-layer loop under gevent or eventlet, run by one real OS thread
    (started with the unpatched ``_thread``), so no greenlet's thread has a running loop.
    Code in that thread sees the same patched modules (sockets, selectors, DNS) and blocks
    in a hub of its own, never in the greenlets' hub. ``call()`` hands it a coroutine and
    waits cooperatively: the other greenlets run meanwhile."""

    def __init__(self, library: str) -> None:
        self.pid = os.getpid()
        self.seen: dict[str, float] = {}  # as _Local.seen, for the whole process
        # Every greenlet's calls share this loop, so its connection pool: gather_bounded
        # bounds them together.
        self.limit = asyncio.Semaphore(MAX_CONCURRENT_SENDS)
        self.loop: asyncio.AbstractEventLoop
        self.closed = False
        self._error: BaseException | None = None
        self._waiter = _gevent_waiter if library == "gevent" else _eventlet_waiter
        start_new_thread, allocate_lock = thread_primitives()
        # Real locks, each waited for once: at start (briefly) and by close_loops().
        self._ready, self._stopped = allocate_lock(), allocate_lock()
        self._ready.acquire()
        self._stopped.acquire()
        start_new_thread(self._run, ())
        if not self._ready.acquire(timeout=TIMEOUT_SECONDS):
            raise RuntimeError("turbo_tasks: the channel-layer loop thread did not start")
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            self.loop = asyncio.new_event_loop()
        except BaseException as exc:
            self._error, self.closed = exc, True
            self._ready.release()
            return
        self._ready.release()
        try:
            self.loop.run_forever()
            # Stopped by close(): calls still running end as cancelled, and their callers
            # hear of it at once.
            tasks = asyncio.all_tasks(self.loop)
            for task in tasks:
                task.cancel()
            if tasks:
                self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        finally:
            self.closed = True  # the next call starts another loop thread
            try:  # in this thread: channels_redis closes its connections as the loop closes
                self.loop.close()
            except Exception:
                logger.debug("turbo_tasks: closing a channel-layer loop failed", exc_info=True)
            self._stopped.release()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        notify, wait = self._waiter()
        started: list[asyncio.Task[T]] = []  # the task, made in the loop thread

        def start() -> None:
            started.append(self.loop.create_task(asyncio.wait_for(coro, TIMEOUT_SECONDS)))
            started[0].add_done_callback(lambda _: notify())

        try:
            self.loop.call_soon_threadsafe(start)
        except RuntimeError:  # closed by close_loops() meanwhile
            coro.close()
            raise
        try:
            if not wait(TIMEOUT_SECONDS + _GRACE_SECONDS):
                raise TimeoutError(
                    "turbo_tasks: the channel-layer loop thread did not answer within "
                    f"{TIMEOUT_SECONDS + _GRACE_SECONDS:g}s"
                )
        except BaseException:  # that, or the greenlet was killed (e.g. a Celery time limit)
            with contextlib.suppress(RuntimeError):  # runs after start(): the task exists
                self.loop.call_soon_threadsafe(lambda: started[0].cancel())
            raise
        return started[0].result()

    def close(self) -> None:
        """Stop the loop and wait (blocking this OS thread) until it is closed."""
        self.closed = True
        with contextlib.suppress(RuntimeError):  # already closed
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._stopped.acquire(timeout=TIMEOUT_SECONDS)


_loop_thread: LoopThread | None = None


# Made at import, after gevent/eventlet patched threading: it guards against greenlets.
_start_lock = threading.Lock()


def state(library: str) -> LoopThread:
    """This process's loop thread, started on first use."""
    global _loop_thread
    state = _loop_thread
    if state is None or state.pid != os.getpid() or state.closed:
        # A forked child has no loop thread: it makes its own, on sockets of its own.
        with _start_lock:
            state = _loop_thread
            if state is None or state.pid != os.getpid() or state.closed:
                state = _loop_thread = LoopThread(library)
    return state


_Waiter = tuple[Callable[[], None], Callable[[float], bool]]


def _gevent_waiter() -> _Waiter:
    """(notify, wait): ``notify()`` from any thread wakes ``wait(timeout)`` in the calling
    greenlet, through the hub's thread-safe callback (a libev/libuv async watcher)."""
    hub = sys.modules["gevent"].get_hub()
    event = importlib.import_module("gevent.event").Event()
    return (lambda: hub.loop.run_callback_threadsafe(event.set)), event.wait


def _eventlet_waiter() -> _Waiter:
    """As _gevent_waiter, for eventlet (whose hubs have no thread-safe callback)."""
    waker = _EventletWaker.of_this_hub()
    event = importlib.import_module("eventlet.event").Event()
    return (lambda: waker.wake(event)), lambda timeout: bool(event.wait(timeout))


class _EventletWaker:
    """Sends eventlet events from another OS thread, as eventlet.tpool does: that thread
    queues the event and writes a byte to a socket, which a greenthread of the hub reads."""

    _by_hub: weakref.WeakKeyDictionary[Any, _EventletWaker] = weakref.WeakKeyDictionary()

    @classmethod
    def of_this_hub(cls) -> _EventletWaker:
        hub = sys.modules["eventlet.hubs"].get_hub()
        waker = cls._by_hub.get(hub)
        if waker is None or waker.pid != os.getpid():
            waker = cls._by_hub[hub] = cls()
        return waker

    def __init__(self) -> None:
        self.pid = os.getpid()
        rsock, self._wsock = sys.modules["eventlet.patcher"].original("socket").socketpair()
        self._wsock.setblocking(False)
        self._rsock = importlib.import_module("eventlet.greenio").GreenSocket(rsock)
        self._events: collections.deque[Any] = collections.deque()
        importlib.import_module("eventlet.greenthread").spawn_n(self._dispatch)

    def wake(self, event: Any) -> None:  # in any thread
        self._events.append(event)
        with contextlib.suppress(BlockingIOError):  # full: the reader has bytes to wake it
            self._wsock.send(b"\0")

    def _dispatch(self) -> None:
        while self.pid == os.getpid() and self._rsock.recv(4096):
            while self._events:
                self._events.popleft().send(True)


def close() -> None:
    """Stop this process's loop thread, if it has one (``layers.close_loops``)."""
    state = _loop_thread
    if state is not None and state.pid == os.getpid() and not state.closed:
        state.close()


def shared_limit() -> asyncio.Semaphore | None:
    """The bound all greenlets' calls share, when running on the loop thread."""
    state = _loop_thread
    if state is not None and not state.closed and state.loop is asyncio.get_running_loop():
        return state.limit
    return None
