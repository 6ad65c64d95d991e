"""The ``<turbo-stream>`` element: its actions, the rules its attributes follow, its markup.

The rules are checked twice, by the same functions: when a stream action is called (a
ValueError for the caller, turbo_tasks.rendering.check_arguments) and when a worker
validates a job (turbo_tasks.jobs.validate, whose arguments may have been edited by hand).
"""

from __future__ import annotations

from typing import Literal, get_args

from django.utils.html import escape

Action = Literal["append", "prepend", "replace", "update", "before", "after", "remove", "refresh"]
ACTIONS: tuple[str, ...] = get_args(Action)
# Actions that may morph (Turbo 8's method="morph") instead of replacing.
MORPHING = ("replace", "update")


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


def check_method(action: str, method: str | None) -> None:
    if method is not None and (method != "morph" or action not in MORPHING):
        raise ValueError(
            f"method={method!r}: only method='morph' is supported, on replace and update."
        )


def check_frame(action: str, target: str | None, targets: str | None, method: str | None) -> None:
    """The element's rules: a known action; ``method="morph"`` only on replace and update;
    a refresh has no target, every other action exactly one of ``target`` (an element id)
    and ``targets`` (a CSS selector)."""
    check_action(action)
    check_method(action, method)
    if action == "refresh":
        if target is not None or targets is not None:
            raise ValueError("A refresh takes no target: it reloads the whole page.")
        return
    check_target(target, targets)


def check_content(action: str, template: bool, text: bool) -> None:
    """What goes in the element's ``<template>``: a refresh takes neither a template nor
    text, ``remove`` needs neither, every other action exactly one of them."""
    if action == "refresh":
        if template or text:
            raise ValueError("A refresh takes no template or text.")
    elif action != "remove" and template == text:
        raise ValueError(
            f"{action}() needs a template name (with an optional context) "
            f"or text=, not {'both' if text else 'neither'}."
        )


def turbo_stream(
    action: str,
    *,
    target: str | None = None,
    targets: str | None = None,
    content: str = "",
    method: str | None = None,
    request_id: str | None = None,
) -> str:
    """Return one ``<turbo-stream>`` element. ``content`` must already be safe HTML.

    ``turbo_stream("append", target="ms", content="<p>hi</p>")`` returns::

        <turbo-stream action="append" target="ms"><template><p>hi</p></template></turbo-stream>

    ``remove`` has no ``<template>``:
    ``<turbo-stream action="remove" target="message-5"></turbo-stream>``; ``refresh`` has no
    target either: ``<turbo-stream action="refresh" request-id="…"></turbo-stream>``
    (``request-id`` only when given). ``method="morph"`` (replace and update):
    ``<turbo-stream action="replace" method="morph" target="room"><template>…``.
    """
    check_frame(action, target, targets, method)
    attrs = f'action="{action}"'
    if action == "refresh":
        if request_id is not None:
            attrs += f' request-id="{escape(request_id)}"'
        return f"<turbo-stream {attrs}></turbo-stream>"
    if method is not None:
        attrs += f' method="{method}"'
    if target is not None:
        attrs += f' target="{escape(target)}"'
    else:
        attrs += f' targets="{escape(targets)}"'
    if action == "remove":
        return f"<turbo-stream {attrs}></turbo-stream>"
    return f"<turbo-stream {attrs}><template>{content}</template></turbo-stream>"
