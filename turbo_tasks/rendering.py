"""``<turbo-stream>`` markup, and the frames a worker renders and pushes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, TypedDict, get_args

import django
from django.apps import apps
from django.template.loader import render_to_string
from django.utils.html import escape

if TYPE_CHECKING:
    from django.http import HttpRequest

    from turbo_tasks.streams import Stream

Action = Literal["append", "prepend", "replace", "update", "before", "after", "remove"]
ACTIONS: tuple[str, ...] = get_args(Action)


def check_action(action: str) -> None:
    if action not in ACTIONS:
        raise ValueError(f"Unknown action {action!r}, must be one of: {', '.join(ACTIONS)}.")


def check_target(id: str | None, selector: str | None) -> None:
    """Exactly one of ``id`` (an element id) or ``selector`` (a CSS selector) is required."""
    if (id is None) == (selector is None):
        given = "both" if id is not None else "neither"
        raise ValueError(
            f"Pass exactly one of id= (an element id, sent as target=) or selector= "
            f"(a CSS selector, sent as targets=); got {given}."
        )


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
    action: str, template: str | None, id: str | None, selector: str | None, text: str | None
) -> None:
    """Everything an action call can get wrong, before anything is rendered or sent: the
    action, exactly one target, the template (partials need Django 6) and exactly one of a
    template and ``text`` (``remove`` takes neither)."""
    check_action(action)
    check_target(id, selector)
    check_template(template)
    if action != "remove" and (template is None) == (text is None):
        raise ValueError(
            f"{action}() needs a template name (with an optional context) "
            f"or text=, not {'both' if text is not None else 'neither'}."
        )


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
) -> str:
    """Render the template (Django autoescaping applies) or escape ``text``, and wrap it.

    With ``request`` (a view's response, not a worker's frame) the template gets the
    context processors' variables and ``{% csrf_token %}`` works.
    """
    if action == "remove":
        content = ""
    elif text is not None:
        content = escape(text)
    elif template is not None:
        check_template(template)
        content = render_to_string(template, context or {}, request=request)
    else:
        raise ValueError(f"{action}() needs a template name or text=.")
    return turbo_stream(action, target=target, targets=targets, content=content)


def turbo_stream(
    action: str, *, target: str | None = None, targets: str | None = None, content: str = ""
) -> str:
    """Return one ``<turbo-stream>`` element. ``content`` must already be safe HTML.

    ``turbo_stream("append", target="ms", content="<p>hi</p>")`` returns::

        <turbo-stream action="append" target="ms"><template><p>hi</p></template></turbo-stream>

    ``remove`` has no ``<template>``:
    ``<turbo-stream action="remove" target="message-5"></turbo-stream>``.
    """
    check_action(action)
    check_target(target, targets)
    if target is not None:
        attrs = f'action="{action}" target="{escape(target)}"'
    else:
        attrs = f'action="{action}" targets="{escape(targets)}"'
    if action == "remove":
        return f"<turbo-stream {attrs}></turbo-stream>"
    return f"<turbo-stream {attrs}><template>{content}</template></turbo-stream>"


class Broadcast:
    """One ``<turbo-stream>`` frame for one stream, as pushed to its Channels group.

    Rendered on first access to ``html``: the worker skips rendering frames for streams
    nobody is subscribed to.
    """

    __slots__ = (
        "_context",
        "_html",
        "_template",
        "_text",
        "action",
        "group",
        "stream",
        "target",
        "targets",
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
    ) -> None:
        self.stream, self.group = stream, group
        self.action, self.target, self.targets = action, target, targets
        self._template, self._context, self._text = template, context, text
        self._html: str | None = None

    @property
    def html(self) -> str:
        if self._html is None:
            self._html = render_frame(
                self.action,
                target=self.target,
                targets=self.targets,
                template=self._template,
                context=self._context,
                text=self._text,
            )
        return self._html

    def __repr__(self) -> str:
        where = (
            f"target={self.target!r}" if self.target is not None else f"targets={self.targets!r}"
        )
        return f"<Broadcast {self.action} {where} to {self.stream!r}>"
