"""The chat's live updates: each room page subscribes to its room's stream; a saved or
deleted message is appended, replaced or removed there by a Celery worker."""

import turbo_tasks as turbo

from .models import Message, Room


class RoomStream(turbo.ModelStream):
    class Meta:
        model = Room
        # A room renamed (say in the admin) refreshes its open pages, morphing them
        # (room.html opts in), at most once per REFRESH_DEBOUNCE_SECONDS.
        broadcasts_refreshes = True

    def user_passes_test(self, user):
        # Who may subscribe to room.stream: its members only. The signed name in the page
        # is not a secret to rely on; this check runs on every subscribe.
        return user.is_authenticated and self.instance.members.filter(pk=user.pk).exists()


class MessageStream(turbo.ModelStream):
    class Meta:
        model = Message

    def on_save(self, message, created, *args, **kwargs):
        if created:
            # The author's tab shows the message already (the redirect after posting
            # renders it): spare that socket the frame.
            message.room.stream.append(
                "chat/message.html", {"message": message}, id="messages", exclude_sender=True
            )
            RoomActivityComponent(message.room_id).render()
        else:
            message.room.stream.replace(
                "chat/message.html", {"message": message}, id=f"message-{message.id}"
            )

    def on_delete(self, message, *args, **kwargs):
        message.room.stream.remove(id=f"message-{message.id}")
        RoomActivityComponent(message.room_id).render()

    def user_passes_test(self, user):
        return True  # no page subscribes to a single message


class RoomActivityComponent(turbo.BroadcastComponent):
    """The room's message count in its header: {% turbo_component %} renders it in the page,
    render() updates it on every member's page (a worker renders it after the commit)."""

    template_name = "chat/room_activity.html"

    def __init__(self, room_id):
        self.room_id = room_id

    def get_context(self):
        return {"count": Message.objects.filter(room_id=self.room_id).count()}

    def user_passes_test(self, user):
        return (
            user.is_authenticated
            and Room.objects.filter(pk=self.room_id, members__pk=user.pk).exists()
        )
