"""Channels' ``AsyncConsumer`` and ``AsyncWebsocketConsumer`` internals the websocket
consumer relies on."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from channels.consumer import get_handler_name
from channels.exceptions import InvalidChannelLayerError, StopConsumer

Receive = Callable[[], Awaitable[Any]]


def wrapped_channel_receive(wrap: Callable[[Any, Receive], Receive]) -> property:
    """A property for an ``AsyncConsumer`` subclass: ``AsyncConsumer.__call__`` assigns the
    channel layer's receive for the consumer's channel to ``self.channel_receive`` and
    awaits it in its loop; the property keeps ``wrap(consumer, receive)`` instead."""

    def get(self: Any) -> Receive:
        receive: Receive = self._wrapped_channel_receive
        return receive

    def set_(self: Any, receive: Receive) -> None:
        self._wrapped_channel_receive = wrap(self, receive)

    return property(get, set_)


async def dispatch_without_db_cleanup(consumer: Any, message: dict[str, Any]) -> None:
    """Run the handler ``AsyncConsumer.dispatch`` would run for ``message``, without the
    ``aclose_old_connections()`` it awaits first (a hop through Channels' one
    thread-sensitive executor, for a handler that touches no database)."""
    await getattr(consumer, get_handler_name(message))(message)


async def websocket_disconnect_without_db_cleanup(consumer: Any, message: dict[str, Any]) -> None:
    """What ``AsyncWebsocketConsumer.websocket_disconnect`` does, without the
    ``aclose_old_connections()`` it awaits after ``disconnect()``: leave the groups named in
    ``consumer.groups``, run ``consumer.disconnect(code)``, stop the consumer."""
    try:
        for group in consumer.groups:
            await consumer.channel_layer.group_discard(group, consumer.channel_name)
    except AttributeError:
        raise InvalidChannelLayerError(
            "BACKEND is unconfigured or doesn't support groups"
        ) from None
    await consumer.disconnect(message["code"])
    raise StopConsumer()
