"""Revoked access: stream.recheck(), the periodic recheck, and re-subscribing on an open
socket, with real sockets (uvicorn + channels_redis) and a real worker."""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.contrib.sessions.models import Session
from django.db import connections
from django.test import Client, override_settings

import turbo_tasks as turbo
from tests.testapp.models import Message, Room
from tests.testapp.streams import StaffStream
from turbo_tasks.consumers import TurboStreamsConsumer

pytestmark = pytest.mark.django_db(transaction=True)


@pytest_asyncio.fixture
async def sync_thread_closes_its_connections():
    """Async tests query through sync_to_async's one thread: close what it opened, or
    PostgreSQL refuses to drop the test database at the end of the session."""
    yield
    await sync_to_async(connections.close_all)()


def session_cookie(user: User) -> str:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


@pytest.mark.usefixtures("celery_worker_process")
def test_a_removed_member_is_revoked_and_gets_nothing_more(ws_client):
    user = User.objects.create_user("ann")
    private, public = Room.objects.create(name="p", private=True), Room.objects.create(name="o")
    private.members.add(user)
    client = ws_client(cookie=session_cookie(user))
    name = private.stream.signed_name
    assert client.subscribe(name)["type"] == "subscribed"
    client.subscribe(public.stream.signed_name)
    Message.objects.create(room=private, text="before")
    assert "before" in client.messages()

    private.members.remove(user)
    private.stream.recheck()  # after commit, through the worker, to every subscriber
    assert client.wait(lambda f: f["type"] == "revoked") == {"type": "revoked", "stream": name}

    Message.objects.create(room=private, text="after")
    Message.objects.create(room=public, text="public")
    # Frames are pushed in commit order: once the public one is here, the private one
    # would have been too.
    assert "public" in client.messages()
    assert not [f for f in client.frames if "after" in f.get("html", "")]
    # Asking again on the same socket is checked again, and refused.
    assert client.subscribe(name) == {"type": "rejected", "stream": name, "reason": "forbidden"}


@pytest.mark.usefixtures("celery_worker_process")
def test_recheck_keeps_those_who_still_pass(ws_client):
    ann, bob = User.objects.create_user("ann"), User.objects.create_user("bob")
    room = Room.objects.create(name="p", private=True)
    room.members.add(ann, bob)
    clients = {u.username: ws_client(cookie=session_cookie(u)) for u in (ann, bob)}
    for client in clients.values():
        client.subscribe(room.stream.signed_name)
    room.members.remove(bob)
    with turbo.suppress():  # suppresses broadcasts, never a permission check
        room.stream.recheck()
    assert clients["bob"].wait(lambda f: f["type"] == "revoked")["type"] == "revoked"
    Message.objects.create(room=room, text="members only")
    assert "members only" in clients["ann"].messages()
    assert not [f for f in clients["ann"].frames if f["type"] == "revoked"]


def test_a_resubscribe_on_an_open_socket_sees_a_demotion(ws_client):
    # The socket's user was loaded at connect; the check must see the database as it is.
    user = User.objects.create_user("ann", is_staff=True)
    client = ws_client(cookie=session_cookie(user))
    name = StaffStream().signed_name
    assert client.subscribe(name)["type"] == "subscribed"
    User.objects.filter(pk=user.pk).update(is_staff=False)
    client.send({"type": "unsubscribe", "stream": name})
    assert client.subscribe(name) == {"type": "rejected", "stream": name, "reason": "forbidden"}
    User.objects.filter(pk=user.pk).update(is_staff=True, is_active=False)
    assert client.subscribe(name)["reason"] == "forbidden"  # deactivated: anonymous


@pytest.mark.usefixtures("celery_worker_process")
def test_a_logout_elsewhere_or_a_password_change_revokes(ws_client):
    # What the user's next request would see: their session as stored now.
    ann, bob = User.objects.create_user("ann"), User.objects.create_user("bob")
    room = Room.objects.create(name="p", private=True)
    room.members.add(ann, bob)
    cookies = {u.username: session_cookie(u) for u in (ann, bob)}
    clients = {name: ws_client(cookie=cookie) for name, cookie in cookies.items()}
    name = room.stream.signed_name
    for client in clients.values():
        assert client.subscribe(name)["type"] == "subscribed"
    Session.objects.filter(pk=cookies["ann"].removeprefix("sessionid=")).delete()  # logout
    bob.set_password("new secret")  # every other session of bob's is now invalid
    bob.save()
    room.stream.recheck()
    for client in clients.values():
        assert client.wait(lambda f: f["type"] == "revoked")["stream"] == name
    # Neither session left it in the store: a check reads, never writes.
    assert Session.objects.filter(pk=cookies["bob"].removeprefix("sessionid=")).exists()


@pytest.mark.asyncio
@pytest.mark.usefixtures("sync_thread_closes_its_connections")
async def test_the_periodic_group_refresh_rechecks_every_subscription():
    # Consumer logic only: the in-memory layer and a scope user set by hand.
    user = await sync_to_async(User.objects.create_user)("ann", is_staff=True)
    with override_settings(
        TURBO_TASKS={"GROUP_REFRESH_SECONDS": 0.2},
        CHANNEL_LAYERS={"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}},
    ):
        ws = WebsocketCommunicator(TurboStreamsConsumer.as_asgi(), "/ws/turbo/")
        ws.scope["user"] = user
        assert (await ws.connect(timeout=10))[0]
        try:
            assert (await ws.receive_json_from(timeout=10))["type"] == "hello"
            name = StaffStream().signed_name
            await ws.send_json_to({"type": "subscribe", "stream": name})
            assert (await ws.receive_json_from(timeout=10))["type"] == "subscribed"
            await sync_to_async(User.objects.filter(pk=user.pk).update)(is_staff=False)
            frame = await ws.receive_json_from(timeout=10)
            assert frame == {"type": "revoked", "stream": name}
            # Later refreshes (every 0.2 s) find nothing left to revoke.
            assert await ws.receive_nothing(timeout=0.6)
        finally:
            await ws.disconnect(timeout=10)


@pytest.mark.asyncio
@pytest.mark.usefixtures("sync_thread_closes_its_connections")
async def test_a_recheck_sent_while_a_subscribe_is_being_checked_reaches_it(monkeypatch):
    # The socket joins the group before the permission check reads the database: a
    # revocation committed after that read is followed by a recheck this socket receives.
    from channels.layers import get_channel_layer

    from turbo_tasks import permissions

    user = await sync_to_async(User.objects.create_user)("ann", is_staff=True)
    checking, release = asyncio.Event(), asyncio.Event()
    real_authorize = permissions.authorize

    async def slow_authorize(ref, scope):  # type: ignore[no-untyped-def]
        answer = await real_authorize(ref, scope)  # reads is_staff=True
        checking.set()
        await release.wait()
        return answer

    monkeypatch.setattr(permissions, "authorize", slow_authorize)
    with override_settings(
        CHANNEL_LAYERS={"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    ):
        ws = WebsocketCommunicator(TurboStreamsConsumer.as_asgi(), "/ws/turbo/")
        ws.scope["user"] = user
        assert (await ws.connect(timeout=10))[0]
        try:
            assert (await ws.receive_json_from(timeout=10))["type"] == "hello"
            stream = StaffStream()
            name = stream.signed_name  # once: a signed name embeds the second it was made
            await ws.send_json_to({"type": "subscribe", "stream": name})
            await asyncio.wait_for(checking.wait(), 10)
            # Demoted, and stream.recheck() ran, while the subscribe is still in flight.
            await sync_to_async(User.objects.filter(pk=user.pk).update)(is_staff=False)
            await get_channel_layer().group_send(
                stream.group_name, {"type": "turbo.recheck", "group": stream.group_name}
            )
            release.set()
            assert (await ws.receive_json_from(timeout=10))["type"] == "subscribed"
            frame = await ws.receive_json_from(timeout=10)
            assert frame == {"type": "revoked", "stream": name}
        finally:
            await ws.disconnect(timeout=10)
