"""The seed example, with only its import changed, plus a per-user stream."""

import time
from pathlib import Path

import turbo_tasks as turbo
from tests.otherapp.streams import AnnouncementStream, AuditedModelStream  # noqa: F401

from .components import BannerComponent  # noqa: F401  (registered as testapp.BannerComponent)
from .models import Gated, Member, Message, Notice, Room


class RoomStream(turbo.ModelStream):
    class Meta:
        model = Room

    def user_passes_test(self, user):
        if not self.instance.private:
            return True
        return user.is_authenticated and self.instance.members.filter(pk=user.pk).exists()


class MessageStream(AuditedModelStream):
    class Meta:
        model = Message

    def on_save(self, message, created, *args, **kwargs):
        if created:
            message.room.stream.append("chat/message.html", {"message": message}, id="messages")
        else:
            message.room.stream.replace(
                "chat/message.html", {"message": message}, id=f"message-{message.id}"
            )

    def on_delete(self, message, *args, **kwargs):
        message.room.stream.remove(id=f"message-{message.id}")

    def user_passes_test(self, user):
        return True


class NotificationStream(turbo.Stream):
    """A per-user stream: only its user may subscribe."""

    def __init__(self, user_id):
        self.user_id = user_id

    def user_passes_test(self, user):
        return user.is_authenticated and user.pk == self.user_id


class GatedStream(turbo.ModelStream):
    class Meta:
        model = Gated

    def on_save(self, gated, created, *args, **kwargs):
        Path(gated.started_path).touch()
        deadline = time.monotonic() + 120
        while not Path(gated.gate_path).exists():
            if time.monotonic() > deadline:
                raise RuntimeError("the test never opened the gate")
            time.sleep(0.05)
        gated.room.stream.append(text=gated.name, id="gated")


class MemberStream(turbo.ModelStream):
    class Meta:
        model = Member

    def on_delete(self, member, *args, **kwargs):
        member.room.stream.remove(id=f"member-{member.pk}")


class RoomLookupStream(turbo.Stream):
    """Its constructor queries the database (and raises DoesNotExist for a missing room)."""

    def __init__(self, room_id):
        self.room = Room.objects.get(pk=room_id)


class NoticeStream(turbo.ModelStream):
    class Meta:
        model = Notice
        exclude_sender = True  # so does every action sent to this stream by default

    def on_save(self, notice, created, *args, **kwargs):
        # The room's stream does not exclude the sender by itself: this action asks.
        notice.room.stream.append(
            "chat/notice.html", {"notice": notice}, id="notices", exclude_sender=True
        )
        notice.stream.update("chat/notice.html", {"notice": notice}, id="notice")


class StaffStream(turbo.Stream):
    """Staff only: a demotion must reach sockets that subscribed before it."""

    def user_passes_test(self, user):
        return user.is_staff


class AlertComponent(turbo.BroadcastComponent):
    """turbo-django's component example: one banner for every page."""

    template_name = "components/alert.html"

    def get_context(self):
        return {"level": "info"}


class CartCountComponent(turbo.UserBroadcastComponent):
    """A per-user component: only its user's pages get its updates."""

    template_name = "components/count.html"

    def get_context(self):
        return {"owner": self.user}
