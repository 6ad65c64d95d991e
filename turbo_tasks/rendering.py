"""Rendering ``<turbo-stream>`` frames from templates: what an action call checks, the
frames a worker renders and pushes (:class:`Broadcast`), and a view's frames
(turbo_tasks.http). The element itself is turbo_tasks.markup."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypedDict

import django
from django.apps import apps
from django.template.loader import render_to_string
from django.utils.html import escape

from turbo_tasks import markup, request_context
from turbo_tasks.markup import ACTIONS, MORPHING, Action, check_content, check_frame

if TYPE_CHECKING:
    from django.http import HttpRequest

    from turbo_tasks.streams import Stream

# A template context; for a deferred action, model instances in it travel to the worker as
# row references.
Context = dict[str, Any] | None


class Target(TypedDict, total=False):
    """Where an action applies (exactly one of ``id`` and ``selector``) and, instead of a
    template, a ``text`` to send HTML-escaped."""

    id: str | None
    selector: str | None
    text: str | None


def check_arguments(
    action: str,
    template: str | None,
    id: str | None,
    selector: str | None,
    text: str | None,
    method: str | None = None,
) -> None:
    """Everything an action call can get wrong, before anything is rendered or sent: the
    action, exactly one target, the template (partials need Django 6), exactly one of a
    template and ``text`` (``remove`` takes neither) and ``method``."""
    check_frame(action, id, selector, method)
    check_content(action, template is not None, text is not None)
    check_template(template)


def check_template(template: str | None) -> None:
    """``"chat/room.html#message"`` names the partial ``message`` of ``chat/room.html``.

    Django 6.0 loads such names itself. Before 6.0 only the django-template-partials app
    does; without it the worker would fail with a TemplateDoesNotExist for a file named
    ``room.html#message``, long after the call that asked for it.
    """
    if (
        template is not None
        and "#" in template
        and django.VERSION < (6, 0)
        and not apps.is_installed("template_partials")
    ):
        name, _, partial = template.partition("#")
        raise ValueError(
            f"Template {template!r} names the partial {partial!r} of {name!r}: template "
            f"partials need Django 6.0 or later (this is Django {django.get_version()}). "
            f"Upgrade Django, install django-template-partials, or render a template file."
        )


def render_frame(
    action: str,
    *,
    target: str | None,
    targets: str | None,
    template: str | None = None,
    context: dict[str, Any] | None = None,
    text: str | None = None,
    request: HttpRequest | None = None,
    method: str | None = None,
    request_id: str | None = None,
) -> str:
    """Render the template (Django autoescaping applies) or escape ``text``, and wrap it.

    With ``request`` (a view's response, not a worker's frame) the template gets the
    context processors' variables and ``{% csrf_token %}`` works.
    """
    if action in ("remove", "refresh"):
        content = ""
    elif text is not None:
        content = escape(text)
    elif template is not None:
        check_template(template)
        content = render_to_string(template, context or {}, request=request)
    else:
        raise ValueError(f"{action}() needs a template name or text=.")
    return markup.turbo_stream(
        action,
        target=target,
        targets=targets,
        content=content,
        method=method,
        request_id=request_id,
    )


class Broadcast:
    """One ``<turbo-stream>`` frame for one stream, as pushed to its Channels group.

    Rendered on first access to ``html``, in the language and time zone of the request that
    caused it (``request``, see turbo_tasks.request_context): the worker skips rendering
    frames for streams nobody is subscribed to. A ``debounce`` refresh goes through
    turbo_tasks.refreshes; ``trailing`` is the token of the window a trailing refresh closes.
    """

    __slots__ = (
        "_context",
        "_html",
        "_template",
        "_text",
        "action",
        "debounce",
        "exclude_sender",
        "group",
        "method",
        "request",
        "stream",
        "target",
        "targets",
        "trailing",
    )

    def __init__(
        self,
        stream: Stream,
        group: str,
        action: str,
        target: str | None,
        targets: str | None,
        template: str | None = None,
        context: dict[str, Any] | None = None,
        text: str | None = None,
        *,
        method: str | None = None,
        request: Mapping[str, str] | None = None,
        exclude_sender: bool = False,
        debounce: bool = False,
        trailing: str | None = None,
    ) -> None:
        self.stream, self.group = stream, group
        self.action, self.target, self.targets = action, target, targets
        self._template, self._context, self._text = template, context, text
        self.method, self.exclude_sender = method, exclude_sender
        self.debounce, self.trailing = debounce, trailing
        self.request: Mapping[str, str] = request or {}
        self._html: str | None = None

    @classmethod
    def rendered(
        cls,
        stream: Stream,
        group: str,
        html: str,
        *,
        request: Mapping[str, str] | None = None,
        exclude_sender: bool = False,
    ) -> Broadcast:
        """A frame rendered already (``stream.stream_raw(html)``), sent as it is."""
        broadcast = cls(
            stream, group, "raw", None, None, request=request, exclude_sender=exclude_sender
        )
        broadcast._html = html
        return broadcast

    @property
    def exclude(self) -> str | None:
        """The socket id this frame must not reach (``exclude_sender``), if any."""
        return self.request.get("sender") if self.exclude_sender else None

    @property
    def html(self) -> str:
        if self._html is None:
            with request_context.activated(self.request):
                self._html = render_frame(
                    self.action,
                    target=self.target,
                    targets=self.targets,
                    template=self._template,
                    context=self._context,
                    text=self._text,
                    method=self.method,
                    request_id=self.request.get("request_id"),
                )
        return self._html

    def __repr__(self) -> str:
        if self.target is not None:
            where = f" target={self.target!r}"
        elif self.targets is not None:
            where = f" targets={self.targets!r}"
        else:
            where = ""
        return f"<Broadcast {self.action}{where} to {self.stream!r}>"


__all__ = ["ACTIONS", "MORPHING", "Action", "Broadcast", "check_arguments", "render_frame"]


def __getattr__(name: str) -> Any:
    # turbo_stream() lived here until 2026-12; keep the old import path working.
    if name == "turbo_stream":
        warnings.warn(
            "turbo_tasks.rendering.turbo_stream moved to turbo_tasks.markup.turbo_stream.",
            DeprecationWarning,
            stacklevel=2,
        )
        return markup.turbo_stream
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
