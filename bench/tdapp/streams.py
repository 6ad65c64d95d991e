"""turbo-django 0.4.4 streams, as its README writes them: ``on_save`` renders the template and
``group_send``s it in the saving process (``Stream.stream`` → ``async_to_sync(group_send)``)."""

import turbo

from .models import TDMessage, TDRoom


class TDRoomStream(turbo.ModelStream):
    class Meta:
        model = TDRoom


class TDMessageStream(turbo.ModelStream):
    class Meta:
        model = TDMessage

    def on_save(self, message, created, *args, **kwargs):
        if created:
            message.room.stream.append("bench/message.html", {"message": message}, id="messages")
        else:
            message.room.stream.replace(
                "bench/message.html", {"message": message}, id=f"m-{message.id}"
            )

    def on_delete(self, message, *args, **kwargs):
        message.room.stream.remove(id=f"m-{message.id}")
