"""turbo_tasks.testing with pytest-celery's in-process worker (``celery_session_worker``):
how a project tests its streams against a real worker without starting processes.

pytest-celery 1.3's ``celery_worker`` is its Docker worker (PITFALLS.md); the in-process
one is ``celery_session_worker``, configured through ``celery_config`` and
``celery_worker_parameters``. The suite's other end-to-end tests use a worker *process*
(tests/conftest.py), which the fault tests need to kill.
"""

from __future__ import annotations

import pytest
from django.conf import settings
from django.test import override_settings

from tests.testapp.models import Message, Room
from turbo_tasks.testing import listen

pytestmark = pytest.mark.django_db(transaction=True)

QUEUE = "in-process-worker"


@pytest.fixture(scope="session")
def celery_config(redis_server: str) -> dict:
    return {
        "broker_url": settings.CELERY_BROKER_URL,
        "broker_transport_options": settings.CELERY_BROKER_TRANSPORT_OPTIONS,
        "task_routes": ("turbo_tasks.tasks.route",),
    }


@pytest.fixture(scope="session")
def celery_worker_parameters() -> dict:
    # Our queue, and Celery's default one for the fixture's start-up ping.
    return {"queues": (QUEUE, "celery")}


@pytest.fixture
def room() -> Room:
    return Room.objects.create(name="in-process")


@pytest.fixture(autouse=True)
def publish_to_the_in_process_worker():
    with override_settings(TURBO_TASKS={"QUEUE": QUEUE}):
        yield


def test_in_process_worker_delivers_what_a_page_would_get(celery_session_worker, room):
    with listen(room) as frames:
        message = Message.objects.create(room=room, text="hello from a test")
        html = frames.wait(action="append", target="messages", contains="hello from a test")
    assert f'id="message-{message.pk}"' in html


def test_listener_reports_what_arrived_when_nothing_matches(celery_session_worker, room):
    with listen(room) as frames:
        Message.objects.create(room=room, text="something else")
        frames.wait(contains="something else")
        with pytest.raises(AssertionError, match="No frame with action='remove'"):
            frames.wait(action="remove", timeout=0.5)
