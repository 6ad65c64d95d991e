"""The seed example's streams, as a turbo_tasks user writes them."""

import turbo_tasks as turbo

from .models import Message, Room


def message_template(message) -> str:
    return "bench/message_counted.html" if message.room.counted else "bench/message.html"


class RoomStream(turbo.ModelStream):
    class Meta:
        model = Room


class MessageStream(turbo.ModelStream):
    class Meta:
        model = Message

    def on_save(self, message, created, *args, **kwargs):
        template = message_template(message)
        if created:
            message.room.stream.append(template, {"message": message}, id="messages")
        else:
            message.room.stream.replace(template, {"message": message}, id=f"m-{message.id}")

    def on_delete(self, message, *args, **kwargs):
        message.room.stream.remove(id=f"m-{message.id}")
