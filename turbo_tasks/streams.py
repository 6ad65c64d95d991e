"""Streams: what pages subscribe to and what hooks broadcast through.

A *stream* is identified by its registered name (``"<app_label>.<ClassName>"``) and the
JSON arguments it was built with (a ModelStream's only argument is its row's pk). Pages
subscribe with a signed form of that identity; workers send to a Channels group derived
from it (turbo_tasks.signing).
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, ClassVar

from asgiref.sync import sync_to_async
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, models

from turbo_tasks import jobs, rendering, signals, signing
from turbo_tasks.jobs import StreamRef, json_value
from turbo_tasks.rendering import Broadcast, Context, Target

if TYPE_CHECKING:
    from typing import Unpack

    from django.contrib.auth.base_user import AbstractBaseUser
    from django.contrib.auth.models import AnonymousUser

# Set by the worker (and turbo_tasks.testing) while hooks run: actions are collected here
# (and rendered before the push) instead of being deferred.
collector: ContextVar[list[Broadcast] | None] = ContextVar("turbo_tasks_collector", default=None)


class Stream:
    """A stream pages can subscribe to, e.g. a per-user notifications stream::

        class NotificationStream(turbo.Stream):
            def __init__(self, user_id):
                self.user_id = user_id

            def user_passes_test(self, user):
                return user.is_authenticated and user.pk == self.user_id

    Declare it in ``<app>/streams.py``. Its init arguments must be JSON-serialisable:
    they are part of the signed name and rebuild the stream on subscribe and in workers.
    A base class meant only to be subclassed says ``class Meta: abstract = True``
    (like Django models, the flag is not inherited).

    Actions send one frame to this stream (``id=`` sends ``target="…"``, ``selector=``
    sends ``targets="…"``; ``text=`` instead of a template is sent HTML-escaped):

    ==========  ==========================================================================
    append      ``<turbo-stream action="append" target="{id}"><template>…</template>…``
                adds the content at the end of the target
    prepend     ``action="prepend"``: adds it at the start of the target
    replace     ``action="replace"``: replaces the target element itself
    update      ``action="update"``: replaces the target's children
    before      ``action="before"``: inserts the content before the target
    after       ``action="after"``: inserts the content after the target
    remove      ``<turbo-stream action="remove" target="{id}"></turbo-stream>``
    ==========  ==========================================================================

    Inside a hook the frame is rendered by the worker running it; anywhere else (a view,
    the shell) the action is sent after the current transaction commits and rendered by a
    worker, with model instances in ``context`` reloaded there.

    ``template`` may name a partial, ``"chat/room.html#message"``, on Django 6.0 and later.

    In async code await ``aappend``, ``aprepend``, ``areplace``, ``aupdate``, ``abefore``,
    ``aafter`` or ``aremove``: same arguments, same frame. They run the action in Django's
    sync thread (``sync_to_async``), where ``asave()`` and ``sync_to_async`` code run their
    queries, so the action joins that thread's transaction and ``on_commit`` as it would in
    a sync view, and publishing never blocks the event loop.
    """

    _init_args: tuple[Any, ...]
    _init_kwargs: dict[str, Any]
    # Set by the registry: "<app_label>.<ClassName>".
    _registered_name: ClassVar[str | None] = None

    def __new__(cls, *args: Any, **kwargs: Any) -> Stream:
        self = super().__new__(cls)
        self._init_args = args
        self._init_kwargs = kwargs
        return self

    # -- identity --------------------------------------------------------------------

    @classmethod
    def stream_name(cls) -> str:
        """The registered name, ``"<app_label>.<ClassName>"``. A method (turbo-django's is
        an attribute, ``"<app_label>:<ClassName>"``); ``{{ stream.stream_name }}`` in a
        template calls it."""
        name = cls.__dict__.get("_registered_name")
        if name is None:
            meta = cls.__dict__.get("Meta")
            why = (
                "it is abstract (its own Meta says abstract = True)"
                if getattr(meta, "abstract", False)
                else "declare it in the streams.py module of an installed app so it is "
                "found at startup"
            )
            raise ImproperlyConfigured(
                f"{cls.__module__}.{cls.__qualname__} is not a registered stream: {why}."
            )
        return str(name)

    def ref(self) -> StreamRef:
        try:
            args = json_value(list(self._init_args))
            kwargs = json_value(self._init_kwargs)
        except TypeError as exc:
            raise TypeError(
                f"{type(self).__name__} arguments must be JSON-serialisable: {exc}"
            ) from None
        return {"stream": self.stream_name(), "args": args, "kwargs": kwargs}

    @classmethod
    def from_ref(cls, ref: StreamRef) -> Stream:
        return cls(*ref["args"], **ref["kwargs"])

    @property
    def signed_name(self) -> str:
        """The signed, URL-safe name a page subscribes with (``{% turbo_subscribe %}``)."""
        return signing.sign(self.ref())

    @property
    def signed_stream_name(self) -> str:
        """turbo-django's name for :attr:`signed_name`: the same signed string."""
        return self.signed_name

    @property
    def group_name(self) -> str:
        """The Channels group frames for this stream are sent to."""
        return signing.group_name(self.ref())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Stream) and type(other) is type(self) and other.ref() == self.ref()

    def __hash__(self) -> int:
        return hash(self.group_name)

    def __repr__(self) -> str:
        ref = self.ref()
        args = [repr(a) for a in ref["args"]] + [f"{k}={v!r}" for k, v in ref["kwargs"].items()]
        return f"<{type(self).__name__}({', '.join(args)})>"

    # -- permissions -----------------------------------------------------------------

    def user_passes_test(self, user: AbstractBaseUser | AnonymousUser) -> bool:
        """Whether ``user`` may subscribe. Called on subscribe with the socket's user."""
        return True

    # -- actions (markup in the class docstring) ---------------------------------------

    def append(
        self, template: str | None = None, context: Context = None, **to: Unpack[Target]
    ) -> None:
        """Add the content at the end of the target (``action="append"``)."""
        self._send("append", template, context, **to)

    def prepend(
        self, template: str | None = None, context: Context = None, **to: Unpack[Target]
    ) -> None:
        """Add the content at the start of the target (``action="prepend"``)."""
        self._send("prepend", template, context, **to)

    def replace(
        self, template: str | None = None, context: Context = None, **to: Unpack[Target]
    ) -> None:
        """Replace the target element itself (``action="replace"``)."""
        self._send("replace", template, context, **to)

    def update(
        self, template: str | None = None, context: Context = None, **to: Unpack[Target]
    ) -> None:
        """Replace the target's children (``action="update"``)."""
        self._send("update", template, context, **to)

    def before(
        self, template: str | None = None, context: Context = None, **to: Unpack[Target]
    ) -> None:
        """Insert the content before the target (``action="before"``)."""
        self._send("before", template, context, **to)

    def after(
        self, template: str | None = None, context: Context = None, **to: Unpack[Target]
    ) -> None:
        """Insert the content after the target (``action="after"``)."""
        self._send("after", template, context, **to)

    def remove(self, *, id: str | None = None, selector: str | None = None) -> None:
        """Remove the target: ``<turbo-stream action="remove" target="{id}"></turbo-stream>``."""
        self._send("remove", None, None, id=id, selector=selector)

    # -- awaitable actions: the sync action in Django's sync thread ----------------------

    async def aappend(
        self, template: str | None = None, context: Context = None, **to: Unpack[Target]
    ) -> None:
        """Await :meth:`append`: ``<turbo-stream action="append" target="{id}"><template>…``."""
        await sync_to_async(self.append)(template, context, **to)

    async def aprepend(
        self, template: str | None = None, context: Context = None, **to: Unpack[Target]
    ) -> None:
        """Await :meth:`prepend`: ``<turbo-stream action="prepend" target="{id}"><template>…``."""
        await sync_to_async(self.prepend)(template, context, **to)

    async def areplace(
        self, template: str | None = None, context: Context = None, **to: Unpack[Target]
    ) -> None:
        """Await :meth:`replace`: ``<turbo-stream action="replace" target="{id}"><template>…``."""
        await sync_to_async(self.replace)(template, context, **to)

    async def aupdate(
        self, template: str | None = None, context: Context = None, **to: Unpack[Target]
    ) -> None:
        """Await :meth:`update`: ``<turbo-stream action="update" target="{id}"><template>…``."""
        await sync_to_async(self.update)(template, context, **to)

    async def abefore(
        self, template: str | None = None, context: Context = None, **to: Unpack[Target]
    ) -> None:
        """Await :meth:`before`: ``<turbo-stream action="before" target="{id}"><template>…``."""
        await sync_to_async(self.before)(template, context, **to)

    async def aafter(
        self, template: str | None = None, context: Context = None, **to: Unpack[Target]
    ) -> None:
        """Await :meth:`after`: ``<turbo-stream action="after" target="{id}"><template>…``."""
        await sync_to_async(self.after)(template, context, **to)

    async def aremove(self, *, id: str | None = None, selector: str | None = None) -> None:
        """Await :meth:`remove`: ``<turbo-stream action="remove" target="{id}"></turbo-stream>``."""
        await sync_to_async(self.remove)(id=id, selector=selector)

    def _send(
        self,
        action: str,
        template: str | None,
        context: Context,
        *,
        id: str | None = None,
        selector: str | None = None,
        text: str | None = None,
    ) -> None:
        rendering.check_arguments(action, template, id, selector, text)
        ref = self.ref()  # a pk-less ModelStream raises here, in the caller's code
        if signals.suppressed():  # turbo.suppress(): arguments checked, nothing sent
            return
        collected = collector.get()
        if collected is not None:
            group = signing.group_name(ref)
            collected.append(Broadcast(self, group, action, id, selector, template, context, text))
            return
        job = jobs.broadcast_job(
            ref, action, target=id, targets=selector, template=template, context=context, text=text
        )
        signals.enqueue(job, using=self._database())

    def _database(self) -> str:
        return DEFAULT_DB_ALIAS


class ModelStream(Stream):
    """The stream of one model's rows, reachable as ``instance.stream``.

    ``on_save`` and ``on_delete`` run in a Celery worker after the write commits::

        class MessageStream(turbo.ModelStream):
            class Meta:
                model = Message
                # Optional: what a delete snapshot holds (default: every concrete field
                # except secret-looking ones such as password or api_token).
                snapshot_fields = ["id", "room", "text"]  # or "__all__"
                snapshot_exclude = ["body"]

            def on_save(self, message, created, *args, **kwargs):
                if created:
                    message.room.stream.append("chat/message.html", {"message": message},
                                               id="messages")
    """

    model: ClassVar[type[models.Model]]
    # Set by the registry from Meta.snapshot_fields / Meta.snapshot_exclude.
    snapshot_attnames: ClassVar[tuple[str, ...]] = ()

    def __init__(self, instance: models.Model | None = None, *, pk: Any = None) -> None:
        self._instance = instance
        self._pk = pk

    @classmethod
    def from_pk(cls, pk: Any) -> ModelStream:
        """The stream of the row with primary key ``pk`` (as turbo-django's ``from_pk``);
        the row is loaded only when ``instance`` is read."""
        return cls(pk=pk)

    @property
    def pk(self) -> Any:
        return self._instance.pk if self._instance is not None else self._pk

    @property
    def instance(self) -> models.Model:
        """The row; loaded from the database when the stream was rebuilt from a pk."""
        if self._instance is None:
            self._instance = self.model._base_manager.get(pk=self._pk)
        return self._instance

    def ref(self) -> StreamRef:
        pk = self.pk
        if pk is None:
            raise ValueError(
                f"{type(self).__name__}: cannot broadcast to or subscribe to an unsaved "
                f"{self.model.__name__} (its pk is None); save it first."
            )
        return {"stream": self.stream_name(), "args": [json_value(pk)], "kwargs": {}}

    @classmethod
    def from_ref(cls, ref: StreamRef) -> Stream:
        if len(ref["args"]) != 1 or ref["kwargs"] or ref["args"][0] is None:
            raise TypeError(f"{cls.__name__} takes exactly one pk")
        return cls(pk=cls.model._meta.pk.to_python(ref["args"][0]))

    @classmethod
    def overrides(cls, hook: str) -> bool:
        """Whether this class defines its own ``on_save``/``on_delete`` (no receiver is
        connected for a hook that does nothing)."""
        return getattr(cls, hook) is not getattr(ModelStream, hook)

    def _database(self) -> str:
        if self._instance is not None and self._instance._state.db:
            return self._instance._state.db
        return super()._database()

    # -- hooks (run by the worker) -----------------------------------------------------

    def on_save(self, instance: Any, created: bool, *args: Any, **kwargs: Any) -> None:
        """Called in a worker after a save of ``instance`` commits; the row is reloaded.

        ``kwargs["update_fields"]`` is the frozenset of field names passed to ``save()``
        (merged over the saves of the row in one transaction), or None when a save named
        none, so a hook can skip saves that changed nothing it shows::

            def on_save(self, message, created, *args, update_fields=None, **kwargs):
                if update_fields is not None and "text" not in update_fields:
                    return
        """

    def on_delete(self, instance: Any, *args: Any, **kwargs: Any) -> None:
        """Called in a worker after a delete commits; ``instance`` is rebuilt from a snapshot
        taken at delete time, so its fields and foreign keys work as before the delete."""
