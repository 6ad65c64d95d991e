"""``{% turbo_subscribe %}``, ``{% turbo_component %}`` and ``{% turbo_tasks_script %}``."""

from __future__ import annotations

import inspect
from typing import Any, cast

from django import template
from django.templatetags.static import static
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

from turbo_tasks import history, layers
from turbo_tasks.components import BroadcastComponent
from turbo_tasks.registry import registry
from turbo_tasks.streams import ModelStream, Stream

register = template.Library()


def _stream(value: Any) -> Stream:
    if isinstance(value, Stream):
        return value
    if isinstance(value, str):
        return _stream_named(value)
    stream = getattr(value, "stream", None)
    if isinstance(stream, Stream):
        return stream
    raise template.TemplateSyntaxError(
        f"turbo_subscribe takes streams, model instances with a ModelStream or the "
        f"name of a stream without arguments, not {type(value).__name__}."
    )


def _stream_named(name: str) -> Stream:
    # "app:Name" is how turbo-django spelled it.
    cls = registry.get(name) or registry.get(name.replace(":", ".", 1))
    if cls is None:
        raise template.TemplateSyntaxError(
            f"turbo_subscribe: no stream is registered as {name!r}; a stream's name is "
            f'"<app_label>.<ClassName>", e.g. "chat.LobbyStream", for a class in the '
            f"streams.py of an installed app."
        )
    if issubclass(cls, ModelStream):
        raise template.TemplateSyntaxError(
            f"turbo_subscribe {name!r}: {cls.__name__} is a ModelStream; pass the "
            f"{cls.model.__name__} instance instead, e.g. {{% turbo_subscribe object %}}."
        )
    required = [
        p.name
        for p in list(inspect.signature(cls.__init__).parameters.values())[1:]
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if required:
        raise template.TemplateSyntaxError(
            f"turbo_subscribe {name!r}: {cls.__name__}() needs arguments "
            f"({', '.join(required)}); build it in the view, "
            f"e.g. {cls.__name__}(...), and pass it in the template context."
        )
    return cls()


@register.simple_tag
def turbo_subscribe(*streams: Any) -> SafeString:
    """``{% turbo_subscribe room "chat.LobbyStream" %}`` renders, for each stream, model
    instance or name of a registered stream whose ``__init__`` takes no arguments::

        <turbo-channels-stream-source signed-stream-name="…" since="…">
        </turbo-channels-stream-source>

    (on one line). The element subscribes this page to the stream; ``since`` is the
    stream's current offset, so a change committed between this render and the subscribe
    is replayed (no ``since`` with catch-up off). One Redis round trip for all of them.
    """
    if not streams:
        raise template.TemplateSyntaxError("turbo_subscribe needs at least one stream.")
    resolved = [_stream(value) for value in streams]
    layer = layers.get_layer()
    offsets: dict[str, str] = {}
    if history.enabled(layer):
        offsets = history.current_offsets(layer, [stream.group_name for stream in resolved])
    return mark_safe(  # each part is built by format_html
        "".join(_element(stream.signed_name, offsets.get(stream.group_name)) for stream in resolved)
    )


@register.simple_tag(takes_context=True)
def turbo_component(
    context: template.Context, component: Any, *args: Any, **kwargs: Any
) -> SafeString:
    """``{% turbo_component alert %}``, ``{% turbo_component "chat.AlertComponent" %}`` or
    ``{% turbo_component "chat.CartCountComponent" request.user %}`` (a component built with
    those arguments) renders the page's subscription to the component, then the component
    rendered now with the page's context::

        <turbo-channels-stream-source signed-stream-name="…" since="…">
        </turbo-channels-stream-source><div id="chat-alertcomponent">…</div>

    The offset is taken before the render, so an update committed in between is replayed.
    """
    if isinstance(component, str):
        cls = registry.get(component) or registry.get(component.replace(":", ".", 1))
        if cls is None or not issubclass(cls, BroadcastComponent):
            raise template.TemplateSyntaxError(
                f"turbo_component: no component is registered as {component!r}; a "
                f'component\'s name is "<app_label>.<ClassName>" of a BroadcastComponent '
                f"declared in the streams.py of an installed app."
            )
        component = cls(*args, **kwargs)
    elif args or kwargs:
        raise template.TemplateSyntaxError(
            "turbo_component takes arguments only after a component's name."
        )
    if not isinstance(component, BroadcastComponent):
        raise template.TemplateSyntaxError(
            f"turbo_component takes a BroadcastComponent or its name, not "
            f"{type(component).__name__}."
        )
    subscription = turbo_subscribe(component)
    html = component.initial_render(cast("dict[str, Any]", context.flatten()))
    return format_html('{}<div id="{}">{}</div>', subscription, component.dom_id, html)


def _element(signed_name: str, since: str | None) -> str:
    if since is None:
        return format_html(
            '<turbo-channels-stream-source signed-stream-name="{}"></turbo-channels-stream-source>',
            signed_name,
        )
    return format_html(
        '<turbo-channels-stream-source signed-stream-name="{}" since="{}">'
        "</turbo-channels-stream-source>",
        signed_name,
        since,
    )


@register.simple_tag
def turbo_tasks_script() -> SafeString:
    """``<script type="module" src="/static/turbo_tasks/turbo-tasks.js"></script>``: the
    element that connects ``turbo_subscribe`` sources to Turbo (load Turbo itself too)."""
    src = static("turbo_tasks/turbo-tasks.js")
    return format_html('<script type="module" src="{}"></script>', src)
