"""The naive task: render the same frame as turbo_tasks and group_send it, one per save,
as the Channels docs show it (``async_to_sync(channel_layer.group_send)``)."""

from asgiref.sync import async_to_sync
from celery import shared_task
from channels.layers import get_channel_layer

# Connects the task_prerun receiver behind {% task_started_at %} before the first task.
from bench.benchapp.templatetags import bench_tags  # noqa: F401
from turbo_tasks.rendering import render_frame


@shared_task(name="bench.naive_broadcast", ignore_result=True)
def naive_broadcast(pk: int) -> None:
    from bench.benchapp.models import NaiveMessage
    from bench.benchapp.streams import message_template

    message = NaiveMessage.objects.select_related("room").get(pk=pk)
    html = render_frame(
        "append",
        target="messages",
        targets=None,
        template=message_template(message),
        context={"message": message},
    )
    group = message.room.stream.group_name  # the group the page subscribed to
    async_to_sync(get_channel_layer().group_send)(
        group, {"type": "turbo.message", "group": group, "html": html}
    )
