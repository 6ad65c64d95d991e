"""Stream actions: one ``<turbo-stream>`` frame each, sync and awaitable.

The markup of each is in turbo_tasks.streams.Stream's docstring; every action goes through
``Stream._send``. Arguments follow turbo-django's order, so its calls work unchanged::

    stream.append("chat/message.html", {"message": m}, None, None, "messages")
    stream.remove(None, f"message-{m.id}")      # remove(selector, id)

though naming them reads better: ``stream.append("chat/message.html", {…}, id="messages")``.
``text=`` sends text, HTML-escaped, instead of a template; ``selector=`` a CSS selector
(``targets="…"``) instead of an element id (``target="…"``). ``exclude_sender=True`` skips
the socket of the page whose request sent the action (the ``X-Turbo-Tasks-Socket`` header,
see turbo_tasks.middleware); None (the default) follows the stream's
``Meta.exclude_sender``. ``method="morph"`` (replace and update) morphs instead.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, Literal, ParamSpec

from asgiref.sync import sync_to_async

from turbo_tasks.rendering import Context

Morph = Literal["morph"] | None
P = ParamSpec("P")


def _awaitable(
    action: Callable[Concatenate[Any, P], None],
) -> Callable[Concatenate[Any, P], Coroutine[Any, Any, None]]:
    """The awaitable twin of a sync action: the action (as the stream's class defines it)
    in Django's sync thread, where it may touch the database."""

    async def run(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> None:
        await sync_to_async(getattr(self, action.__name__))(*args, **kwargs)

    run.__name__ = run.__qualname__ = f"a{action.__name__}"
    run.__doc__ = f"Await :meth:`{action.__name__}` (same arguments)."
    return run


class Actions:
    """The actions of turbo_tasks.streams.Stream."""

    # Stream._send: checks the arguments, then collects or defers the frame.
    _send: Callable[..., None]

    # -- actions (markup in the class docstring) ---------------------------------------

    def append(
        self,
        template: str | None = None,
        context: Context = None,
        text: str | None = None,
        selector: str | None = None,
        id: str | None = None,
        *,
        exclude_sender: bool | None = None,
    ) -> None:
        """Add the content at the end of the target (``action="append"``)."""
        self._send("append", template, context, text, selector, id, exclude_sender)

    def prepend(
        self,
        template: str | None = None,
        context: Context = None,
        text: str | None = None,
        selector: str | None = None,
        id: str | None = None,
        *,
        exclude_sender: bool | None = None,
    ) -> None:
        """Add the content at the start of the target (``action="prepend"``)."""
        self._send("prepend", template, context, text, selector, id, exclude_sender)

    def replace(
        self,
        template: str | None = None,
        context: Context = None,
        text: str | None = None,
        selector: str | None = None,
        id: str | None = None,
        *,
        method: Morph = None,
        exclude_sender: bool | None = None,
    ) -> None:
        """Replace the target element itself (``action="replace"``)."""
        self._send("replace", template, context, text, selector, id, exclude_sender, method)

    def update(
        self,
        template: str | None = None,
        context: Context = None,
        text: str | None = None,
        selector: str | None = None,
        id: str | None = None,
        *,
        method: Morph = None,
        exclude_sender: bool | None = None,
    ) -> None:
        """Replace the target's children (``action="update"``)."""
        self._send("update", template, context, text, selector, id, exclude_sender, method)

    def before(
        self,
        template: str | None = None,
        context: Context = None,
        text: str | None = None,
        selector: str | None = None,
        id: str | None = None,
        *,
        exclude_sender: bool | None = None,
    ) -> None:
        """Insert the content before the target (``action="before"``)."""
        self._send("before", template, context, text, selector, id, exclude_sender)

    def after(
        self,
        template: str | None = None,
        context: Context = None,
        text: str | None = None,
        selector: str | None = None,
        id: str | None = None,
        *,
        exclude_sender: bool | None = None,
    ) -> None:
        """Insert the content after the target (``action="after"``)."""
        self._send("after", template, context, text, selector, id, exclude_sender)

    def remove(
        self,
        selector: str | None = None,
        id: str | None = None,
        *,
        exclude_sender: bool | None = None,
    ) -> None:
        """Remove the target: ``<turbo-stream action="remove" target="{id}"></turbo-stream>``."""
        self._send("remove", None, None, None, selector, id, exclude_sender)

    def refresh(self, *, debounce: bool = False, exclude_sender: bool | None = None) -> None:
        """Make subscribed pages reload themselves through Turbo 8:
        ``<turbo-stream action="refresh"></turbo-stream>``, with ``request-id="…"`` when the
        change came from a Turbo request (that page, which made the change, ignores it).

        ``debounce=True``: at most one refresh per stream per
        ``TURBO_TASKS["REFRESH_DEBOUNCE_SECONDS"]`` across all workers, sent at the end of
        the window (so after the last change in it).
        """
        self._send("refresh", None, None, None, None, None, exclude_sender, debounce=debounce)

    # -- awaitable actions: the sync action in Django's sync thread ----------------------

    aappend = _awaitable(append)
    aprepend = _awaitable(prepend)
    areplace = _awaitable(replace)
    aupdate = _awaitable(update)
    abefore = _awaitable(before)
    aafter = _awaitable(after)
    aremove = _awaitable(remove)
    arefresh = _awaitable(refresh)
