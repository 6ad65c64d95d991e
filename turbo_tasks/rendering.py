"""``<turbo-stream>`` markup."""

from __future__ import annotations

from typing import Any, Literal, get_args

from django.template.loader import render_to_string
from django.utils.html import escape

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


def render_frame(
    action: str,
    *,
    target: str | None,
    targets: str | None,
    template: str | None = None,
    context: dict[str, Any] | None = None,
    text: str | None = None,
) -> str:
    """Render the template (Django autoescaping applies) or escape ``text``, and wrap it."""
    if action == "remove":
        content = ""
    elif text is not None:
        content = escape(text)
    elif template is not None:
        content = render_to_string(template, context or {})
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
