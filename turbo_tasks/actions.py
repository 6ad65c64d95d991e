"""Stream actions: one ``<turbo-stream>`` frame each, sync and awaitable.

The markup of each is in turbo_tasks.streams.Stream's docstring; every action goes through
``Stream._send``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from asgiref.sync import sync_to_async

from turbo_tasks.rendering import Context, Target

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Unpack

Morph = Literal["morph"] | None


class Options(Target, total=False):
    """An action's target and ``text`` (turbo_tasks.rendering.Target), and
    ``exclude_sender``: True skips the socket of the page whose request sent the action
    (the ``X-Turbo-Tasks-Socket`` header, see turbo_tasks.middleware); None (the default)
    follows the stream's ``Meta.exclude_sender``."""

    exclude_sender: bool | None


class Actions:
    """The actions of turbo_tasks.streams.Stream."""

    # Stream._send: checks the arguments, then collects or defers the frame.
    _send: Callable[..., None]

    # -- actions (markup in the class docstring) ---------------------------------------

    def append(
        self, template: str | None = None, context: Context = None, **to: Unpack[Options]
    ) -> None:
        """Add the content at the end of the target (``action="append"``)."""
        self._send("append", template, context, **to)

    def prepend(
        self, template: str | None = None, context: Context = None, **to: Unpack[Options]
    ) -> None:
        """Add the content at the start of the target (``action="prepend"``)."""
        self._send("prepend", template, context, **to)

    def replace(
        self,
        template: str | None = None,
        context: Context = None,
        *,
        method: Morph = None,
        **to: Unpack[Options],
    ) -> None:
        """Replace the target element itself (``action="replace"``)."""
        self._send("replace", template, context, method=method, **to)

    def update(
        self,
        template: str | None = None,
        context: Context = None,
        *,
        method: Morph = None,
        **to: Unpack[Options],
    ) -> None:
        """Replace the target's children (``action="update"``)."""
        self._send("update", template, context, method=method, **to)

    def before(
        self, template: str | None = None, context: Context = None, **to: Unpack[Options]
    ) -> None:
        """Insert the content before the target (``action="before"``)."""
        self._send("before", template, context, **to)

    def after(
        self, template: str | None = None, context: Context = None, **to: Unpack[Options]
    ) -> None:
        """Insert the content after the target (``action="after"``)."""
        self._send("after", template, context, **to)

    def remove(
        self,
        *,
        id: str | None = None,
        selector: str | None = None,
        exclude_sender: bool | None = None,
    ) -> None:
        """Remove the target: ``<turbo-stream action="remove" target="{id}"></turbo-stream>``."""
        self._send("remove", None, None, id=id, selector=selector, exclude_sender=exclude_sender)

    def refresh(self, *, debounce: bool = False, exclude_sender: bool | None = None) -> None:
        """Make subscribed pages reload themselves through Turbo 8:
        ``<turbo-stream action="refresh"></turbo-stream>``, with ``request-id="…"`` when the
        change came from a Turbo request (that page, which made the change, ignores it).

        ``debounce=True``: at most one refresh per stream per
        ``TURBO_TASKS["REFRESH_DEBOUNCE_SECONDS"]`` across all workers, sent at the end of
        the window (so after the last change in it).
        """
        self._send("refresh", None, None, exclude_sender=exclude_sender, debounce=debounce)

    # -- awaitable actions: the sync action in Django's sync thread ----------------------

    async def aappend(
        self, template: str | None = None, context: Context = None, **to: Unpack[Options]
    ) -> None:
        """Await :meth:`append`: ``<turbo-stream action="append" target="{id}"><template>…``."""
        await sync_to_async(self.append)(template, context, **to)

    async def aprepend(
        self, template: str | None = None, context: Context = None, **to: Unpack[Options]
    ) -> None:
        """Await :meth:`prepend`: ``<turbo-stream action="prepend" target="{id}"><template>…``."""
        await sync_to_async(self.prepend)(template, context, **to)

    async def areplace(
        self,
        template: str | None = None,
        context: Context = None,
        *,
        method: Morph = None,
        **to: Unpack[Options],
    ) -> None:
        """Await :meth:`replace`: ``<turbo-stream action="replace" target="{id}"><template>…``."""
        await sync_to_async(self.replace)(template, context, method=method, **to)

    async def aupdate(
        self,
        template: str | None = None,
        context: Context = None,
        *,
        method: Morph = None,
        **to: Unpack[Options],
    ) -> None:
        """Await :meth:`update`: ``<turbo-stream action="update" target="{id}"><template>…``."""
        await sync_to_async(self.update)(template, context, method=method, **to)

    async def abefore(
        self, template: str | None = None, context: Context = None, **to: Unpack[Options]
    ) -> None:
        """Await :meth:`before`: ``<turbo-stream action="before" target="{id}"><template>…``."""
        await sync_to_async(self.before)(template, context, **to)

    async def aafter(
        self, template: str | None = None, context: Context = None, **to: Unpack[Options]
    ) -> None:
        """Await :meth:`after`: ``<turbo-stream action="after" target="{id}"><template>…``."""
        await sync_to_async(self.after)(template, context, **to)

    async def aremove(
        self,
        *,
        id: str | None = None,
        selector: str | None = None,
        exclude_sender: bool | None = None,
    ) -> None:
        """Await :meth:`remove`: ``<turbo-stream action="remove" target="{id}"></turbo-stream>``."""
        await sync_to_async(self.remove)(id=id, selector=selector, exclude_sender=exclude_sender)

    async def arefresh(self, *, debounce: bool = False, exclude_sender: bool | None = None) -> None:
        """Await :meth:`refresh`: ``<turbo-stream action="refresh"></turbo-stream>``."""
        await sync_to_async(self.refresh)(debounce=debounce, exclude_sender=exclude_sender)
