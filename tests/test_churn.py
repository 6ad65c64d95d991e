"""Sockets come and go all day (navigation, tabs): a fresh subscription's first frame must
not be lost while other sockets of the same process close. Through a real uvicorn server,
a real worker process and Redis, on both of channels_redis' layers.

The gap check is pushed out of reach (GAP_CHECK_SECONDS = 600) so every frame here must
arrive live: this tests the receive path itself (``_compat.protect_receive`` on the core
layer), not the repair that would hide a loss (tests/test_gaps.py tests that).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest
from django.test import override_settings

from tests.helpers import WsClient, open_websocket, start_asgi, start_worker, test_env
from tests.testapp.models import Message, Room

pytestmark = pytest.mark.django_db(transaction=True)

ROUNDS = 100
LIVE_TIMEOUT = 10  # a live frame takes milliseconds


@pytest.fixture(scope="module", params=["core", "pubsub"])
def churn_server(request, redis_server: str, django_db_setup: None) -> Iterator[tuple[str, str]]:
    kind = request.param
    queue = f"churn-{kind}"
    env = {
        **test_env(),
        "TURBO_TEST_CHANNEL_LAYER": kind,
        "TURBO_TEST_TURBO_TASKS": json.dumps({"GAP_CHECK_SECONDS": 600}),
    }
    worker = start_worker(f"churn-{kind}", queue=queue, env=env)
    server, port = start_asgi(f"churn-{kind}", env=env)
    yield f"ws://127.0.0.1:{port}/ws/turbo/", queue
    server.stop()
    worker.stop()


def _churn(url: str, name: str, stop: threading.Event) -> None:
    """Other pages of the same process: open, subscribe, close, again."""
    while not stop.is_set():
        with open_websocket(url) as conn:
            WsClient(conn).subscribe(name)


def test_a_fresh_subscriptions_first_frame_survives_other_sockets_closing(churn_server):
    url, queue = churn_server
    first, second = Room.objects.create(name="first"), Room.objects.create(name="second")
    stop = threading.Event()
    churners = [
        threading.Thread(target=_churn, args=(url, second.stream.signed_name, stop))
        for _ in range(3)
    ]
    for thread in churners:
        thread.start()
    lost = []
    try:
        with override_settings(TURBO_TASKS={"QUEUE": queue}):
            for number in range(ROUNDS):
                with open_websocket(url) as conn:
                    page = WsClient(conn)
                    assert page.subscribe(first.stream.signed_name)["type"] == "subscribed"
                    frame_id = f"message-{Message.objects.create(room=first, text='x').pk}"
                    try:
                        page.wait(lambda f, i=frame_id: i in f.get("html", ""), LIVE_TIMEOUT)
                    except AssertionError:
                        lost.append(number)
    finally:
        stop.set()
        for thread in churners:
            thread.join(30)
    assert lost == [], f"{len(lost)} of {ROUNDS} first frames lost: rounds {lost}"
