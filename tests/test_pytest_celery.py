"""turbo_tasks.testing with pytest-celery's in-process worker (``celery_session_worker``):
how a project tests its streams against a real worker without starting processes.

pytest-celery 1.3's ``celery_worker`` is its Docker worker (PITFALLS.md); the in-process
one is ``celery_session_worker``, configured through ``celery_config`` and
``celery_worker_parameters``; ``in_process_worker`` (tests/conftest.py) routes a test's
broadcasts to its queue. The fault tests need a worker *process* they can kill
(``celery_worker_process``).
"""

from __future__ import annotations

import pytest

from tests.testapp.models import Message
from turbo_tasks.testing import listen

pytestmark = pytest.mark.django_db(transaction=True)


def test_in_process_worker_delivers_what_a_page_would_get(in_process_worker, room):
    with listen(room) as frames:
        message = Message.objects.create(room=room, text="hello from a test")
        html = frames.wait(action="append", target="messages", contains="hello from a test")
    assert f'id="message-{message.pk}"' in html


def test_listener_reports_what_arrived_when_nothing_matches(in_process_worker, room):
    with listen(room) as frames:
        Message.objects.create(room=room, text="something else")
        frames.wait(contains="something else")
        with pytest.raises(AssertionError, match="No frame with action='remove'"):
            frames.wait(action="remove", timeout=0.5)
