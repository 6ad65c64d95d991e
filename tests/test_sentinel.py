"""Redis Sentinel as the Celery broker (``sentinel://``), end to end: the web side's
publish, a worker and a websocket. (Sentinel-managed channel-layer hosts are tested in
tests/test_pubsub.py, on both layers.)

turbo_tasks' fast publisher writes to plain ``redis://`` brokers only: for Sentinel every
commit goes through Celery's ``send_task``, which asks Sentinel for the master.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest
from celery import Celery, current_app
from django.conf import settings
from django.test import override_settings

from tests.helpers import start_worker, test_env
from tests.test_pubsub import sentinel  # noqa: F401 - the fixture
from tests.testapp.models import Message, Room
from turbo_tasks import publish

pytestmark = pytest.mark.django_db(transaction=True)

QUEUE = "turbo_tasks_sentinel"


@pytest.fixture
def sentinel_broker(sentinel) -> Iterator[Celery]:  # noqa: F811
    """The test process's Celery app on a ``sentinel://`` broker, made from Django settings
    as a project's would be, and a worker on the same broker."""
    (host, port), master = sentinel
    url = f"sentinel://{host}:{port}/0"
    options = {**settings.CELERY_BROKER_TRANSPORT_OPTIONS, "master_name": master}
    env = {
        **test_env(),
        "TURBO_TEST_BROKER_URL": url,
        "TURBO_TEST_SENTINEL_MASTER": master,
        "TURBO_TEST_TURBO_TASKS": json.dumps({"QUEUE": QUEUE}),
    }
    with override_settings(
        CELERY_BROKER_URL=url,
        CELERY_BROKER_TRANSPORT_OPTIONS=options,
        TURBO_TASKS={"QUEUE": QUEUE},
    ):
        app = Celery("sentinel-web", set_as_current=False)
        app.config_from_object("django.conf:settings", namespace="CELERY")
        previous = current_app._get_current_object()
        app.set_current()  # what turbo_tasks.publish sends with
        # It pings through the suite's Redis app: Sentinel leads the worker to that Redis.
        worker = start_worker(f"sentinel-{os.getpid()}", QUEUE, env)
        try:
            yield app
        finally:
            worker.stop()
            previous.set_current()
            app.close()


def test_a_sentinel_broker_delivers_through_send_task(sentinel_broker, ws_client):
    assert publish._make_publisher(sentinel_broker) is None  # no fast path: send_task
    room = Room.objects.create(name="sentinel broker")
    client = ws_client()
    assert client.subscribe(room.stream.signed_name)["type"] == "subscribed"
    message = Message.objects.create(room=room, text="through sentinel")
    assert f'id="message-{message.pk}"' in client.messages()
