"""Celery app for the example site and the test suite, configured from Django settings.

Every ``CELERY_*`` Django setting becomes Celery configuration (``CELERY_BROKER_URL`` →
``broker_url``). Users with their own Celery app need nothing from here: the
``turbo_tasks.deliver`` task is found by ``app.autodiscover_tasks()`` like any app's task.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

from celery import Celery
from celery.signals import worker_shutting_down

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example.settings")

app = Celery("worker")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Flower only sees what workers report; without events a task is invisible until Flower
# happens to switch them on.
app.conf.worker_send_task_events = True
app.autodiscover_tasks()

# Seconds a worker may take to stop once told to (SIGTERM, SIGINT, SIGQUIT) before it exits
# anyway. Some of its broker writes are retried forever while the broker is gone (kombu's
# ensure() without max_retries: event heartbeats, replies to control commands), and a
# further SIGTERM only sets a flag that the stuck main thread never reads. Messages it still
# held come back after the broker's visibility_timeout, as after a SIGKILL.
SHUTDOWN_TIMEOUT = 10.0
EXIT_CODE_GAVE_UP = 70  # EX_SOFTWARE

_deadline_started = False


@worker_shutting_down.connect
def _bound_shutdown(sig: str = "", how: str = "", **kwargs: Any) -> None:
    """Start the clock on the first shutdown signal (sent in the worker's main process).

    In a real OS thread, also under ``-P gevent``/``eventlet``: there threading.Timer is a
    greenlet, which cannot be started from the signal handler (it runs in the hub), and a
    stuck hub would never run it anyway. A thread of ``_thread`` never holds up the exit."""
    from turbo_tasks import _green

    global _deadline_started
    if _deadline_started:
        return
    _deadline_started = True
    start_new_thread, allocate_lock = _green.thread_primitives()
    never = allocate_lock()
    never.acquire()

    def deadline() -> None:
        never.acquire(timeout=SHUTDOWN_TIMEOUT)  # a real wait: time.sleep may be patched
        _give_up(sig, how)

    start_new_thread(deadline, ())


def _give_up(sig: str, how: str) -> None:
    message = (
        f"worker: {how or 'the'} shutdown ({sig}) did not finish within {SHUTDOWN_TIMEOUT:g}s"
        " (is the broker gone?); exiting now\n"
    )
    # os.write, not logging: the stuck thread may hold a logging lock. OSError: e.g. nobody
    # reads the log any more.
    with contextlib.suppress(OSError):
        os.write(sys.__stderr__.fileno() if sys.__stderr__ else 2, message.encode())
    os._exit(EXIT_CODE_GAVE_UP)
