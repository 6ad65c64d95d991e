"""Streams: what pages subscribe to and what hooks broadcast through.

A *stream* is identified by its registered name (``"<app_label>.<ClassName>"``) and the
JSON arguments it was built with (a ModelStream's only argument is its row's pk). Pages
subscribe with a signed form of that identity; workers send to a Channels group derived
from it (turbo_tasks.signing).
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, ClassVar

from asgiref.sync import sync_to_async
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, models

from turbo_tasks import batching, codec, jobs, rendering, request_context, signing
from turbo_tasks.actions import Actions
from turbo_tasks.rendering import Broadcast, Context
from turbo_tasks.signing import StreamRef
from turbo_tasks.snapshots import json_value
from turbo_tasks.suppression import suppressed

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser
    from django.contrib.auth.models import AnonymousUser

    from turbo_tasks.http import TurboRender

# Set by the worker (and turbo_tasks.testing) while hooks run: actions are collected here
# (and rendered before the push) instead of being deferred.
collector: ContextVar[list[Broadcast] | None] = ContextVar("turbo_tasks_collector", default=None)


class Stream(Actions):
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
    refresh     ``<turbo-stream action="refresh"></turbo-stream>``: the page reloads itself
                (morphing where it has ``<meta name="turbo-refresh-method" content="morph">``);
                ``request-id="…"`` is added when the change came from a Turbo request, so
                the page that made it does not refresh
    ==========  ==========================================================================

    ``replace`` and ``update`` take ``method="morph"``:
    ``<turbo-stream action="replace" method="morph" target="{id}"><template>…`` (Turbo 8).
    Every action takes ``exclude_sender=True``: the frame skips the socket of the page that
    made the request (needs turbo_tasks.middleware.TurboTasksMiddleware); ``class Meta:
    exclude_sender = True`` makes that the stream's default. ``refresh(debounce=True)``
    sends at most one refresh per stream per ``TURBO_TASKS["REFRESH_DEBOUNCE_SECONDS"]``,
    across all workers, the last one after the last change.

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
    # Set by the registry: "<app_label>.<ClassName>", and Meta.exclude_sender.
    _registered_name: ClassVar[str | None] = None
    exclude_sender: ClassVar[bool] = False

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
                else "declare it in the streams.py module of an installed app (or import it "
                "there) so it is found at startup; a test can register one with "
                "turbo_tasks.registry.registry.register(cls, app_label)"
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

    @property
    def broadcastable_stream_name(self) -> str:
        """turbo-django's name for :attr:`group_name`."""
        return self.group_name

    def get_init_args(self) -> list[Any]:
        """The stream's arguments, as JSON (turbo-django's name; ``[pk]`` for a ModelStream)."""
        return self.ref()["args"]

    def get_init_kwargs(self) -> dict[str, Any]:
        """The stream's keyword arguments, as JSON (turbo-django's name)."""
        return self.ref()["kwargs"]

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

    # -- revoking access -----------------------------------------------------------------

    def recheck(self) -> None:
        """Run ``user_passes_test`` again for every socket subscribed to this stream, after
        the current transaction commits (e.g. once a user was removed from a room); sockets
        whose user no longer passes get ``{"type": "revoked", "stream": …}`` and no more
        frames. The user is reloaded from the database first."""
        job = jobs.recheck_job(self.ref())
        # Not a broadcast: turbo.suppress() does not hold it back.
        batching.enqueue_all([job], using=self._database(), suppressible=False)

    async def arecheck(self) -> None:
        """Await :meth:`recheck`."""
        await sync_to_async(self.recheck)()

    # -- frames rendered by the caller (turbo-django's stream() and stream_raw()) --------

    def stream_raw(self, html: str, *, exclude_sender: bool | None = None) -> None:
        """Send ``html``, ``<turbo-stream>`` markup rendered already, as it is: nothing is
        escaped, so pass only markup you built (e.g. with ``turbo_tasks.TurboRender`` or
        ``turbo_tasks.markup.turbo_stream()``). Like every action, it is sent after the
        current transaction commits (by the worker, from a hook), and kept for catch-up.

        For what cannot travel to a worker (a form, a request): render it here and send
        the result, ``stream.stream(turbo.TurboRender.init_from_template("f.html",
        {"form": form}, request).replace(id="form"))``.
        """
        if not isinstance(html, str):
            raise TypeError(f"stream_raw() takes the frame's markup as a str, not {html!r}")
        self._emit(
            exclude_sender,
            lambda group, exclude: Broadcast.rendered(
                self, group, html, request=request_context.capture(), exclude_sender=exclude
            ),
            lambda ref, exclude: jobs.raw_job(ref, html, exclude),
        )

    def stream(self, frame: TurboRender, *, exclude_sender: bool | None = None) -> None:
        """Send a frame rendered by :class:`turbo_tasks.TurboRender` (turbo-django's
        ``stream.stream(frame)``); see :meth:`stream_raw`."""
        self.stream_raw(frame.rendered_template, exclude_sender=exclude_sender)

    def _send(
        self,
        action: str,
        template: str | None,
        context: Context,
        text: str | None,
        selector: str | None,
        id: str | None,
        exclude_sender: bool | None,
        method: str | None = None,
        *,
        debounce: bool = False,
    ) -> None:
        rendering.check_arguments(action, template, id, selector, text, method)
        self._emit(
            exclude_sender,
            lambda group, exclude: Broadcast(
                self,
                group,
                action,
                id,
                selector,
                template,
                context,
                text,
                method=method,
                request=request_context.capture(),
                exclude_sender=exclude,
                debounce=debounce,
            ),
            lambda ref, exclude: jobs.broadcast_job(
                ref,
                action,
                target=id,
                targets=selector,
                template=template,
                context=codec.encode_context(context or {}) if template is not None else None,
                text=text,
                method=method,
                exclude_sender=exclude,
                debounce=debounce,
            ),
        )

    def _emit(
        self,
        exclude_sender: bool | None,
        broadcast: Callable[[str, bool], Broadcast],
        job: Callable[[StreamRef, bool], jobs.Job],
    ) -> None:
        """Where a frame goes: nowhere inside ``turbo.suppress()``; inside a hook, to the
        worker running it (``broadcast(group, exclude_sender)``, rendered at the end of the
        task); anywhere else, a job (``job(ref, exclude_sender)``) published after the
        current transaction commits."""
        ref = self.ref()  # a pk-less ModelStream raises here, in the caller's code
        if suppressed():  # turbo.suppress(): arguments checked, nothing sent
            return
        exclude = self.exclude_sender if exclude_sender is None else bool(exclude_sender)
        collected = collector.get()
        if collected is not None:
            collected.append(broadcast(signing.group_name(ref), exclude))
            return
        batching.enqueue(job(ref, exclude), using=self._database())

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
                # Optional: a debounced refresh of the row's stream after every save and
                # delete (turbo-rails' broadcasts_refreshes); the hooks may be left out.
                broadcasts_refreshes = True
                # Optional: actions sent to this stream skip the sender's socket.
                exclude_sender = True

            def on_save(self, message, created, *args, **kwargs):
                if created:
                    message.room.stream.append("chat/message.html", {"message": message},
                                               id="messages")
    """

    model: ClassVar[type[models.Model]]
    # Set by the registry from Meta.snapshot_fields / Meta.snapshot_exclude, and
    # Meta.broadcasts_refreshes.
    snapshot_attnames: ClassVar[tuple[str, ...]] = ()
    broadcasts_refreshes: ClassVar[bool] = False

    def __init__(self, instance: models.Model | Any = None, *, pk: Any = None) -> None:
        if instance is not None and not isinstance(instance, models.Model):
            # ModelStream(pk), as turbo-django's ModelStream took it.
            instance, pk = None, instance
        self._instance = instance
        self._pk = pk

    @classmethod
    def from_pk(cls, pk: Any) -> ModelStream:
        """The stream of the row with primary key ``pk`` (as turbo-django's ``from_pk``);
        the row is loaded only when ``instance`` is read."""
        return cls(pk=pk)

    @classmethod
    def from_instance(cls, instance: models.Model) -> ModelStream:
        """The stream of ``instance``'s row (turbo-django's name; ``instance.stream`` is the
        same)."""
        return cls(instance)

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
        """Whether a save (``"on_save"``) or delete (``"on_delete"``) of a row does anything:
        this class defines its own hook, or broadcasts refreshes (no receiver is connected
        for a write that would do nothing)."""
        return cls.broadcasts_refreshes or getattr(cls, hook) is not getattr(ModelStream, hook)

    def _database(self) -> str:
        if self._instance is not None and self._instance._state.db:
            return self._instance._state.db
        return super()._database()

    # -- hooks (run by the worker) -----------------------------------------------------

    def on_save(self, instance: Any, created: bool, *args: Any, **kwargs: Any) -> None:
        """Called in a worker after a save of ``instance`` commits; the row is reloaded.

        ``kwargs["update_fields"]`` is the frozenset of field names passed to ``save()``
        (merged over the saves of the row in one transaction), or None when a save named
        none, so a hook can skip saves that changed nothing it shows. ``kwargs`` also holds
        ``raw`` (always False: loaddata's saves are not broadcast) and ``using``, the
        database written to; a hook that names some of them and takes no ``**kwargs`` gets
        only those::

            def on_save(self, message, created, *args, update_fields=None, **kwargs):
                if update_fields is not None and "text" not in update_fields:
                    return
        """

    def on_delete(self, instance: Any, *args: Any, **kwargs: Any) -> None:
        """Called in a worker after a delete commits; ``instance`` is rebuilt from a snapshot
        taken at delete time, so its fields and foreign keys work as before the delete.
        ``kwargs["using"]`` is the database the delete went to."""
