"""``{% turbo_subscribe %}`` and ``{% turbo_tasks_script %}``."""

from __future__ import annotations

from typing import Any

from django import template
from django.templatetags.static import static
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from turbo_tasks.streams import Stream

register = template.Library()


def _stream(value: Any) -> Stream:
    if isinstance(value, Stream):
        return value
    stream = getattr(value, "stream", None)
    if isinstance(stream, Stream):
        return stream
    raise template.TemplateSyntaxError(
        f"turbo_subscribe takes streams or model instances with a ModelStream, "
        f"not {type(value).__name__}."
    )


@register.simple_tag
def turbo_subscribe(*streams: Any) -> SafeString:
    """``{% turbo_subscribe room %}`` renders
    ``<turbo-channels-stream-source signed-stream-name="…"></turbo-channels-stream-source>``
    for each stream (or model instance); the element subscribes this page to it."""
    if not streams:
        raise template.TemplateSyntaxError("turbo_subscribe needs at least one stream.")
    return format_html_join(
        "",
        '<turbo-channels-stream-source signed-stream-name="{}"></turbo-channels-stream-source>',
        ((_stream(value).signed_name,) for value in streams),
    )


@register.simple_tag
def turbo_tasks_script() -> SafeString:
    """``<script type="module" src="/static/turbo_tasks/turbo-tasks.js"></script>``: the
    element that connects ``turbo_subscribe`` sources to Turbo (load Turbo itself too)."""
    src = static("turbo_tasks/turbo-tasks.js")
    return format_html('<script type="module" src="{}"></script>', src)
