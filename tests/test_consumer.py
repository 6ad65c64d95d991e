"""The websocket consumer: subscribe, reject, forward, unsubscribe, malformed frames and
limits in process on the in-memory layer; cross-process delivery and the Origin check
through the real ASGI server."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from unittest import mock

import pytest
import redis
import redis.exceptions
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.core import signing
from django.db import connections
from django.test import override_settings
from websockets.exceptions import InvalidStatus

from tests.helpers import WsClient, open_websocket, start_asgi, test_env, wait_for
from tests.testapp.models import Room
from tests.testapp.streams import NotificationStream
from turbo_tasks import conf
from turbo_tasks.consumers import TurboStreamsConsumer
from turbo_tasks.registry import registry
from turbo_tasks.streams import Stream

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 5
HTML = '<turbo-stream action="append" target="messages"><template>hi</template></turbo-stream>'
BAD_TYPE = "type must be 'subscribe' or 'unsubscribe'"
BAD_STREAM = "stream must be a signed stream name (a string)"
NOT_OBJECT = "frame must be a JSON object"


def sign(payload, *, salt=None, at=None):
    """Sign ``payload`` as Stream.signed_name does; ``at`` fakes the signing time."""
    salt = conf.get("SIGNING_SALT") if salt is None else salt
    with mock.patch("django.core.signing.time.time", return_value=at or time.time()):
        return signing.dumps(payload, salt=salt, compress=True)


def subscribed(name):
    return {"type": "subscribed", "stream": name}


def rejected(name, reason):
    return {"type": "rejected", "stream": name, "reason": reason}


def message(name, html=HTML):
    return {"type": "message", "stream": name, "html": html}


def error(reason):
    return {"type": "error", "reason": reason}


def event(stream, html=HTML):
    return {"type": "turbo.message", "group": stream.group_name, "html": html}


async def push(stream, html=HTML):
    """Send a frame to ``stream``'s group, as a worker does."""
    await get_channel_layer().group_send(stream.group_name, event(stream, html))


@asynccontextmanager
async def connect(user=None):
    ws = WebsocketCommunicator(TurboStreamsConsumer.as_asgi(), "/ws/turbo/")
    ws.scope["user"] = user or AnonymousUser()
    connected, _ = await ws.connect(timeout=TIMEOUT)
    assert connected
    hello = await receive(ws)
    assert hello["type"] == "hello", hello
    assert len(hello["socket_id"]) >= 22, hello  # 16 random bytes
    ws.socket_id = hello["socket_id"]
    try:
        yield ws
    finally:
        await ws.disconnect(timeout=TIMEOUT)


async def send(ws, kind, name):
    await ws.send_json_to({"type": kind, "stream": name})


async def receive(ws):
    return await ws.receive_json_from(timeout=TIMEOUT)


async def subscribe(ws, name):
    await send(ws, "subscribe", name)
    return await receive(ws)


async def assert_subscribes(ws, name):
    """``name`` is read once: signed_name embeds the current second."""
    assert await subscribe(ws, name) == subscribed(name)


async def nothing(ws):
    return await ws.receive_nothing(timeout=0.2)


class ExplodingStream(Stream):
    def user_passes_test(self, user):
        raise RuntimeError("boom")


@pytest.fixture(autouse=True)
def in_memory_layer(request):
    """In-process (asyncio) tests get a fresh in-memory layer; the real-server tests keep
    tests.settings' Redis layer, which the uvicorn process shares."""
    if request.node.get_closest_marker("asyncio") is None:
        yield
        return
    with override_settings(
        CHANNEL_LAYERS={"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    ):
        yield


@pytest.fixture
def rooms():
    return [Room.objects.create(name=f"room {i}") for i in range(3)]


@pytest.fixture
def alice():
    return User.objects.create_user("alice")


@pytest.fixture(params=["anonymous", "bob"])
def outsider(request):
    return None if request.param == "anonymous" else User.objects.create_user("bob")


@pytest.fixture
def private_room(alice):
    room = Room.objects.create(name="secret", private=True)
    room.members.add(alice)
    return room


@pytest.fixture
def exploding_stream():
    registry.register(ExplodingStream, "testapp")
    yield ExplodingStream()
    registry.unregister(ExplodingStream)


# -- subscribe and forward -----------------------------------------------------------------


@pytest.mark.asyncio
async def test_subscribe_valid_name_is_echoed_and_its_frames_forwarded(room):
    name = room.stream.signed_name
    async with connect() as ws:
        await assert_subscribes(ws, name)
        await push(room.stream)
        assert await receive(ws) == message(name)
        assert await nothing(ws)


@pytest.mark.asyncio
async def test_frames_and_the_pages_own_messages_skip_channels_database_cleanup_hop(room):
    # Channels cleans up DB connections in one shared thread before every handler; a frame
    # touches no database, and that hop per socket dominated the fan-out to 1,000 sockets.
    # Nor do connect, subscribe and disconnect (three hops per page in a reconnect storm):
    # their only queries go through database_sync_to_async, which cleans up itself.
    name = room.stream.signed_name
    with (
        mock.patch("channels.consumer.aclose_old_connections", new_callable=mock.AsyncMock) as hop,
        # AsyncWebsocketConsumer.websocket_disconnect awaits its own, after disconnect().
        mock.patch(
            "channels.generic.websocket.aclose_old_connections", new_callable=mock.AsyncMock
        ) as hop_after_disconnect,
    ):
        async with connect() as ws:
            await assert_subscribes(ws, name)
            await push(room.stream)
            assert await receive(ws) == message(name)
            await ws.send_json_to({"type": "unsubscribe", "stream": name})
            await nothing(ws)
            assert hop.await_count == 0
            # Other handlers (a recheck, a subclass's own) still get it.
            await ws.send_input({"type": "turbo.recheck", "group": room.stream.group_name})
            await nothing(ws)
            assert hop.await_count == 1
        # The page has closed and the consumer has finished.
        assert hop_after_disconnect.await_count == 0
        assert hop.await_count == 1


@pytest.mark.asyncio
async def test_message_each_subscription_gets_its_own_frames(rooms):
    a, b = rooms[0].stream, rooms[1].stream
    async with connect() as ws:
        await subscribe(ws, name_a := a.signed_name)
        await subscribe(ws, name_b := b.signed_name)
        await push(a, "for a")
        await push(b, "for b")
        assert await receive(ws) == message(name_a, "for a")
        assert await receive(ws) == message(name_b, "for b")


@pytest.mark.asyncio
async def test_message_for_another_stream_never_arrives(rooms):
    a, b = rooms[0].stream, rooms[1].stream
    async with connect() as on_a, connect() as on_b:
        await subscribe(on_a, name_a := a.signed_name)
        await subscribe(on_b, b.signed_name)
        await push(a, "for a")
        assert await receive(on_a) == message(name_a, "for a")
        assert await nothing(on_b)


# -- rejected names ------------------------------------------------------------------------


def tampered(stream):
    head, signature = stream.signed_name.rsplit(":", 1)
    return f"{head}:{'B' if signature[0] == 'A' else 'A'}{signature[1:]}"


def truncated(stream):
    return stream.signed_name[:-5]


def other_salt(stream):
    return sign([stream.stream_name(), stream.ref()["args"]], salt="other")


def other_secret_key(stream):
    with override_settings(SECRET_KEY="another-secret-key"):
        return stream.signed_name


def unsigned(stream):
    return stream.stream_name()


@pytest.mark.asyncio
@pytest.mark.parametrize("forge", [tampered, truncated, other_salt, other_secret_key, unsigned])
async def test_subscribe_bad_signature_is_rejected(room, forge):
    name = forge(room.stream)
    async with connect() as ws:
        assert await subscribe(ws, name) == rejected(name, "invalid_signature")
        await push(room.stream)
        assert await nothing(ws)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "payload",
    [
        {"stream": "testapp.RoomStream", "args": [1]},
        "testapp.RoomStream",
        ["testapp.RoomStream"],
        ["testapp.RoomStream", 1],
        [1, [1]],
        ["testapp.RoomStream", [1], ["not", "kwargs"]],
    ],
)
async def test_subscribe_signed_payload_of_wrong_shape_is_rejected(payload):
    name = sign(payload)
    async with connect() as ws:
        assert await subscribe(ws, name) == rejected(name, "invalid_signature")


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "payload",
    [
        ["testapp.Nope", [1]],
        ["testapp.RoomStream", ["abc"]],
        ["testapp.RoomStream", [1, 2]],
        ["testapp.RoomStream", [1], {"extra": 1}],
        ["testapp.NotificationStream", [], {"nope": 1}],
    ],
)
async def test_subscribe_unknown_stream_or_arguments_is_rejected_and_socket_stays_usable(
    room, payload
):
    name = sign(payload)
    async with connect() as ws:
        assert await subscribe(ws, name) == rejected(name, "unknown_stream")
        await assert_subscribes(ws, room.stream.signed_name)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "payload",
    [
        ["testapp.RoomStream", [None]],  # validly signed, but no row can have a null pk
        ["testapp.RoomLookupStream", [999_999]],  # its constructor raises DoesNotExist
    ],
)
async def test_subscribe_stream_that_fails_to_build_is_unknown_for_that_stream_only(
    room, payload, caplog
):
    name, good = sign(payload), room.stream.signed_name  # read once: it embeds the second
    async with connect() as ws:
        assert await subscribe(ws, name) == rejected(name, "unknown_stream")
        await assert_subscribes(ws, good)
        await push(room.stream)
        assert await receive(ws) == message(good)


@pytest.mark.asyncio
async def test_subscribe_stream_whose_constructor_queries_the_database(room):
    # It runs in a thread: on the event loop Django would raise SynchronousOnlyOperation.
    name = sign(["testapp.RoomLookupStream", [room.pk]])
    async with connect() as ws:
        assert await subscribe(ws, name) == subscribed(name)


@pytest.mark.asyncio
async def test_subscribe_missing_row_is_forbidden():
    name = sign(["testapp.RoomStream", [999_999]])
    async with connect() as ws:
        assert await subscribe(ws, name) == rejected(name, "forbidden")


@pytest.mark.asyncio
async def test_subscribe_expired_name_is_rejected(room):
    name = sign(["testapp.RoomStream", [room.pk]], at=time.time() - 10)
    async with connect() as ws:
        with override_settings(TURBO_TASKS={"SIGNED_NAME_MAX_AGE": 1}):
            assert await subscribe(ws, name) == rejected(name, "expired")


@pytest.mark.asyncio
async def test_subscribe_name_within_max_age_is_subscribed(room):
    name = room.stream.signed_name
    async with connect() as ws:
        with override_settings(TURBO_TASKS={"SIGNED_NAME_MAX_AGE": 60}):
            await assert_subscribes(ws, name)


# -- permissions ---------------------------------------------------------------------------


def private_room_stream(private_room, alice):
    return private_room.stream


def alices_notifications(private_room, alice):
    return NotificationStream(alice.pk)


@pytest.mark.asyncio
@pytest.mark.parametrize("stream_of", [private_room_stream, alices_notifications])
async def test_permission_others_are_forbidden(private_room, alice, outsider, stream_of):
    stream = stream_of(private_room, alice)
    name = stream.signed_name
    async with connect(outsider) as ws:
        assert await subscribe(ws, name) == rejected(name, "forbidden")
        await push(stream)
        assert await nothing(ws)


@pytest.mark.asyncio
@pytest.mark.parametrize("stream_of", [private_room_stream, alices_notifications])
async def test_permission_allowed_user_is_subscribed(private_room, alice, stream_of):
    name = stream_of(private_room, alice).signed_name
    async with connect(alice) as ws:
        await assert_subscribes(ws, name)


@pytest.mark.asyncio
async def test_user_passes_test_that_raises_is_forbidden_and_logged(exploding_stream, room, caplog):
    name = exploding_stream.signed_name
    async with connect() as ws:
        with caplog.at_level(logging.ERROR, logger="turbo_tasks"):
            assert await subscribe(ws, name) == rejected(name, "forbidden")
        await assert_subscribes(ws, room.stream.signed_name)
    assert [r.getMessage() for r in caplog.records] == [
        "turbo_tasks: <ExplodingStream()>.user_passes_test raised; refusing"
    ]


# -- malformed frames ----------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("not json", "invalid JSON"),
        ("", "invalid JSON"),
        ("{'type': 'subscribe'}", "invalid JSON"),
        ("[]", NOT_OBJECT),
        ('"subscribe"', NOT_OBJECT),
        ("42", NOT_OBJECT),
        ("null", NOT_OBJECT),
        ('{"type": "publish", "stream": "x"}', BAD_TYPE),
        ('{"stream": "x"}', BAD_TYPE),
        ('{"type": ["subscribe"], "stream": "x"}', BAD_TYPE),
        ('{"type": "subscribe"}', BAD_STREAM),
        ('{"type": "subscribe", "stream": 42}', BAD_STREAM),
        ('{"type": "subscribe", "stream": ""}', BAD_STREAM),
        ('{"type": "subscribe", "stream": ["x"]}', BAD_STREAM),
        ('{"type": "unsubscribe", "stream": null}', BAD_STREAM),
    ],
)
async def test_malformed_frame_is_an_error_and_socket_stays_usable(room, text, reason):
    async with connect() as ws:
        # send_to() refuses an empty text frame; a browser can send one.
        await ws.send_input({"type": "websocket.receive", "text": text})
        assert await receive(ws) == error(reason)
        await assert_subscribes(ws, room.stream.signed_name)


@pytest.mark.asyncio
async def test_binary_frame_is_an_error_and_socket_stays_usable(room):
    name = room.stream.signed_name
    async with connect() as ws:
        await ws.send_to(bytes_data=json.dumps({"type": "subscribe", "stream": name}).encode())
        assert await receive(ws) == error("binary frames are not supported")
        await assert_subscribes(ws, name)


@pytest.mark.asyncio
async def test_frame_larger_than_max_frame_size_is_an_error(room):
    name = room.stream.signed_name
    async with connect() as ws:
        with override_settings(TURBO_TASKS={"MAX_FRAME_SIZE": 100}):
            await ws.send_to(text_data=json.dumps({"type": "subscribe", "stream": "x" * 80}))
            frame = await receive(ws)
        assert frame == error("frame too large")
        await assert_subscribes(ws, name)


@pytest.mark.asyncio
async def test_frame_of_exactly_max_frame_size_is_parsed():
    text = json.dumps({"type": "publish", "pad": ""})
    text = json.dumps({"type": "publish", "pad": "x" * (100 - len(text))})
    assert len(text) == 100
    async with connect() as ws:
        with override_settings(TURBO_TASKS={"MAX_FRAME_SIZE": 100}):
            await ws.send_to(text_data=text)
            assert await receive(ws) == error(BAD_TYPE)


@pytest.mark.asyncio
async def test_deeply_nested_json_is_an_error_and_socket_stays_usable(room):
    name = room.stream.signed_name
    async with connect() as ws:
        await ws.send_to(text_data="[" * 5000)
        assert await receive(ws) == error("invalid JSON")
        await assert_subscribes(ws, name)


# -- limits --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_subscription_cap_rejects_a_third_stream(rooms):
    a, b, c = (r.stream.signed_name for r in rooms)
    async with connect() as ws:
        with override_settings(TURBO_TASKS={"MAX_SUBSCRIPTIONS_PER_SOCKET": 2}):
            await assert_subscribes(ws, a)
            await assert_subscribes(ws, b)
            assert await subscribe(ws, c) == rejected(c, "too_many_subscriptions")
            await assert_subscribes(ws, a)
            await push(rooms[2].stream)
            assert await nothing(ws)


@pytest.mark.asyncio
async def test_subscription_cap_frees_a_slot_on_unsubscribe(rooms):
    a, b, c = (r.stream.signed_name for r in rooms)
    async with connect() as ws:
        with override_settings(TURBO_TASKS={"MAX_SUBSCRIPTIONS_PER_SOCKET": 2}):
            await subscribe(ws, a)
            await subscribe(ws, b)
            await send(ws, "unsubscribe", a)
            await assert_subscribes(ws, c)


# -- unsubscribe and disconnect ------------------------------------------------------------


@pytest.mark.asyncio
async def test_unsubscribe_stops_messages(room):
    name = room.stream.signed_name
    async with connect() as ws:
        await subscribe(ws, name)
        await send(ws, "unsubscribe", name)
        assert await nothing(ws)  # no reply to unsubscribe
        await push(room.stream)
        assert await nothing(ws)


@pytest.mark.asyncio
async def test_unsubscribe_never_subscribed_is_harmless(rooms):
    a, b = rooms[0].stream.signed_name, rooms[1].stream.signed_name
    async with connect() as ws:
        await subscribe(ws, a)
        await send(ws, "unsubscribe", b)
        await send(ws, "unsubscribe", "not-a-signed-name")
        assert await nothing(ws)
        await push(rooms[0].stream)
        assert await receive(ws) == message(a)


@pytest.mark.asyncio
async def test_same_name_twice_gives_one_frame_per_message(room):
    name = room.stream.signed_name
    async with connect() as ws:
        await assert_subscribes(ws, name)
        await assert_subscribes(ws, name)
        await push(room.stream)
        assert await receive(ws) == message(name)
        assert await nothing(ws)
        await send(ws, "unsubscribe", name)
        await push(room.stream)
        assert await nothing(ws)


@pytest.mark.asyncio
async def test_two_names_for_one_stream_each_get_the_frame_until_unsubscribed(room):
    old = sign(["testapp.RoomStream", [room.pk]], at=time.time() - 5)
    new = room.stream.signed_name
    assert old != new
    async with connect() as ws:
        await assert_subscribes(ws, old)
        await assert_subscribes(ws, new)
        await push(room.stream)
        frames = [await receive(ws) for _ in range(2)]
        assert frames == [message(name) for name in sorted([old, new])]
        await send(ws, "unsubscribe", old)
        await push(room.stream)
        assert await receive(ws) == message(new)
        assert await nothing(ws)


@pytest.mark.asyncio
async def test_disconnect_discards_the_groups(rooms):
    a, b = rooms[0].stream, rooms[1].stream
    layer = get_channel_layer()
    async with connect() as ws:
        await subscribe(ws, a.signed_name)
        await subscribe(ws, b.signed_name)
        assert {a.group_name, b.group_name} <= set(layer.groups)
    assert a.group_name not in layer.groups
    assert b.group_name not in layer.groups
    await push(a)


@pytest.mark.asyncio
async def test_group_membership_is_refreshed_before_the_layer_forgets_it(room):
    stream, layer = room.stream, get_channel_layer()
    with override_settings(TURBO_TASKS={"GROUP_REFRESH_SECONDS": 0.05}):
        async with connect() as ws:
            await assert_subscribes(ws, stream.signed_name)
            [channel] = layer.groups[stream.group_name]
            # What channels_redis does to members older than its group_expiry:
            await layer.group_discard(stream.group_name, channel)
            for _ in range(100):
                if channel in layer.groups.get(stream.group_name, {}):
                    break
                await asyncio.sleep(0.05)
            await push(stream)
            assert (await receive(ws))["type"] == "message"


@pytest.mark.asyncio
async def test_refresher_never_rejoins_a_group_unsubscribed_meanwhile(rooms):
    layer = get_channel_layer()
    real_group_add, joins = layer.group_add, []

    async def slow_group_add(group, channel):
        # A round trip to Redis: the refresher yields here, and the socket's unsubscribe
        # runs meanwhile.
        joins.append(group)
        await asyncio.sleep(0.02)
        await real_group_add(group, channel)

    a, b = rooms[0].stream, rooms[1].stream
    with (
        override_settings(TURBO_TASKS={"GROUP_REFRESH_SECONDS": 0.001}),
        mock.patch.object(layer, "group_add", slow_group_add),
    ):
        async with connect() as ws:
            name_a, name_b = a.signed_name, b.signed_name
            await assert_subscribes(ws, name_a)
            await assert_subscribes(ws, name_b)
            # Unsubscribe while the refresher is busy re-adding a, with b still to do.
            for _ in range(500):
                if joins and joins[-1] == a.group_name:
                    break
                await asyncio.sleep(0.001)
            await send(ws, "unsubscribe", name_b)
            done = len(joins)
            for _ in range(500):  # let the refresher run a few more rounds
                if joins.count(a.group_name) - joins[:done].count(a.group_name) >= 3:
                    break
                await asyncio.sleep(0.005)
            assert b.group_name not in layer.groups
            assert b.group_name not in joins[done:]


def refresh_tasks():
    return [
        t
        for t in asyncio.all_tasks()
        if getattr(t.get_coro(), "__qualname__", "").endswith("_refresh_groups")
    ]


@pytest.mark.asyncio
async def test_a_crashed_consumer_stops_refreshing_its_groups(rooms):
    # E.g. Redis down during a subscribe: the consumer dies without a websocket.disconnect,
    # and its refresher used to keep re-adding the dead channel to its groups forever.
    ws = WebsocketCommunicator(TurboStreamsConsumer.as_asgi(), "/ws/turbo/")
    ws.scope["user"] = AnonymousUser()
    assert (await ws.connect(timeout=TIMEOUT))[0]
    assert (await receive(ws))["type"] == "hello"
    await assert_subscribes(ws, rooms[0].stream.signed_name)
    assert len(refresh_tasks()) == 1
    layer = get_channel_layer()
    with mock.patch.object(layer, "group_add", side_effect=ConnectionError("Redis is down")):
        await send(ws, "subscribe", rooms[1].stream.signed_name)
        with pytest.raises(ConnectionError):
            await ws.receive_output(timeout=TIMEOUT)
    for _ in range(100):
        if not refresh_tasks():
            break
        await asyncio.sleep(0.01)
    assert refresh_tasks() == []


# -- through the real ASGI server ----------------------------------------------------------


def test_real_server_frames_reach_only_sockets_subscribed_to_that_stream(ws_client, rooms):
    a, b = rooms[0].stream, rooms[1].stream
    name_a, name_b = a.signed_name, b.signed_name
    on_a, on_b = ws_client(), ws_client()
    assert on_a.subscribe(name_a)["type"] == "subscribed"
    assert on_b.subscribe(name_b)["type"] == "subscribed"
    send_to_group = async_to_sync(get_channel_layer().group_send)
    # Each socket's frames arrive in send order, so a stray frame would come first.
    send_to_group(b.group_name, event(b, "b1"))
    send_to_group(a.group_name, event(a, "a1"))
    send_to_group(b.group_name, event(b, "b2"))
    assert on_a.next(timeout=TIMEOUT) == message(name_a, "a1")
    assert on_b.next(timeout=TIMEOUT) == message(name_b, "b1")
    assert on_b.next(timeout=TIMEOUT) == message(name_b, "b2")


@pytest.mark.parametrize("origin", ["http://evil.example", "http://127.0.0.1.evil.example", None])
def test_real_server_refuses_cross_site_origin(ws_client, origin):
    with pytest.raises(InvalidStatus) as refused:
        ws_client(origin=origin)
    assert refused.value.response.status_code == 403


def test_real_server_accepts_own_origin(ws_client, room):
    name = room.stream.signed_name
    client = ws_client(origin="http://127.0.0.1")
    assert client.subscribe(name)["type"] == "subscribed"


def test_real_server_a_burst_of_closing_sockets_leaves_no_members_behind(ws_client, room):
    # As when a proxy restarts: every socket closes at once. More group_discards in flight
    # than redis-py's pool holds (100) used to fail and leave dead members in the group.
    name, group = room.stream.signed_name, room.stream.group_name
    clients = [ws_client() for _ in range(160)]
    for client in clients:
        assert client.subscribe(name)["type"] == "subscribed"
    server = redis.Redis.from_url(settings.CHANNEL_REDIS_URL)
    if settings.CHANNEL_LAYER_KIND == "core":
        # The core layer: every socket's channel is a member of the group's sorted set.
        key = get_channel_layer()._group_key(group)

        def members() -> int:
            return int(server.zcard(key))

        assert members() == len(clients)
    else:
        # The pub/sub layer (TURBO_TEST_CHANNEL_LAYER=pubsub): the ASGI process subscribes
        # to the group's channel while any of its sockets is in the group.
        prefix = settings.CHANNEL_LAYERS["default"].get("CONFIG", {}).get("prefix", "asgi")
        channel = f"{prefix}__group__{group}"  # RedisPubSubLoopLayer._get_group_channel_name

        def members() -> int:
            return int(dict(server.pubsub_numsub(channel))[channel.encode()])

        assert members() == 1
    with ThreadPoolExecutor(len(clients)) as pool:
        list(pool.map(lambda client: client.conn.close(), clients))
    wait_for(lambda: members() == 0, TIMEOUT, "every member to leave the group")


# -- the channel-layer configuration users already have -------------------------------------


@pytest.mark.asyncio
async def test_a_channel_layer_read_that_times_out_does_not_stop_the_socket(room):
    layer = get_channel_layer()
    real_receive, timeouts = layer.receive, []

    async def receive_times_out_twice(channel):
        if len(timeouts) < 2:
            timeouts.append(channel)
            raise redis.exceptions.TimeoutError("Timeout reading from 127.0.0.1:6379")
        return await real_receive(channel)

    with mock.patch.object(layer, "receive", receive_times_out_twice):
        async with connect() as ws:
            await assert_subscribes(ws, name := room.stream.signed_name)
            await push(room.stream)
            assert await receive(ws) == message(name)
    assert len(timeouts) == 2


def test_idle_socket_survives_the_channels_docs_configuration(redis_server, room):
    # CHANNEL_LAYERS as the Channels docs show it: hosts [("127.0.0.1", port)], no socket
    # timeout. redis-py 8's default (5 s) equals channels_redis' blocking read, which used
    # to close every idle socket with 1011 within ~5 s.
    env = test_env()
    env["TURBO_TEST_DOCS_CHANNEL_LAYER"] = "1"
    server, port = start_asgi("docs-layer-asgi", env)
    try:
        name = room.stream.signed_name
        url = f"ws://127.0.0.1:{port}/ws/turbo/"
        client = WsClient(open_websocket(url))
        assert client.subscribe(name)["type"] == "subscribed"
        # Idle for more than two blocking reads.
        with pytest.raises(TimeoutError):
            client.conn.recv(timeout=12)
        async_to_sync(get_channel_layer().group_send)(room.stream.group_name, event(room.stream))
        assert client.next(timeout=TIMEOUT) == message(name)
        client.conn.close()
    finally:
        server.stop()
    assert "had no socket_timeout" in server.log()


REDIS_LAYERS = settings.CHANNEL_LAYERS  # tests.settings' channels_redis layer


@pytest.mark.asyncio
async def test_subscribes_at_once_stay_within_the_redis_pool(redis_server, rooms):
    # After a server restart every page subscribes at once. Group changes and history
    # reads share one bound (MAX_CONCURRENT_GROUP_CHANGES) below redis-py's pool of 100:
    # beyond it the pool raises MaxConnectionsError and the socket dies (F4 lost 118 of
    # 1,000 sockets so when the history reads were left unbounded).
    from turbo_tasks import history, storm

    in_flight, peak = 0, 0

    def counted(call):  # type: ignore[no-untyped-def]
        async def run(*args, **kwargs):  # type: ignore[no-untyped-def]
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            try:
                await asyncio.sleep(0.02)  # a slow Redis: calls overlap
                return await call(*args, **kwargs)
            finally:
                in_flight -= 1

        return run

    with override_settings(CHANNEL_LAYERS=REDIS_LAYERS):
        layer = get_channel_layer()
        name = rooms[0].stream.signed_name
        since = (
            await asyncio.to_thread(history.current_offsets, layer, [rooms[0].stream.group_name])
        )[rooms[0].stream.group_name]
        with (
            mock.patch.object(layer, "group_add", counted(layer.group_add)),
            mock.patch.object(history, "read", counted(history.read)),
        ):
            sockets = [
                WebsocketCommunicator(TurboStreamsConsumer.as_asgi(), "/ws/turbo/")
                for _ in range(80)
            ]
            for ws in sockets:
                ws.scope["user"] = AnonymousUser()
            try:
                await asyncio.gather(*(ws.connect(timeout=TIMEOUT) for ws in sockets))
                for ws in sockets:
                    assert (await receive(ws))["type"] == "hello"
                await asyncio.gather(
                    *(
                        ws.send_json_to({"type": "subscribe", "stream": name, "since": since})
                        for ws in sockets
                    )
                )
                answers = await asyncio.gather(*(receive(ws) for ws in sockets))
            finally:
                await asyncio.gather(*(ws.disconnect(timeout=TIMEOUT) for ws in sockets))
                await sync_to_async(connections.close_all)()  # the checks' thread
    assert [a["type"] for a in answers] == ["subscribed"] * 80
    assert 1 < peak <= storm.MAX_CONCURRENT_GROUP_CHANGES
