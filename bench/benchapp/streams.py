"""The seed example's streams, as a turbo_tasks user writes them."""

import turbo_tasks as turbo

from .models import Message, Room


def message_template(message) -> str:
    if message.room.counted:
        return "bench/message_counted.html"  # F3
    if message.room.stamped:
        return "bench/message_stamped.html"  # F2
    return "bench/message.html"


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
