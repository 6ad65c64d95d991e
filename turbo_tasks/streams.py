"""Streams: what pages subscribe to and what hooks broadcast through.

A *stream* is identified by its registered name (``"<app_label>.<ClassName>"``) and the
JSON arguments it was built with (a ModelStream's only argument is its row's pk). Pages
subscribe with a signed form of that identity; workers send to a Channels group derived
from it.
"""

from __future__ import annotations

import hashlib
import json
from contextvars import ContextVar
from importlib import import_module
from typing import TYPE_CHECKING, Any, ClassVar, TypedDict

from django.apps import apps
from django.core import signing
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.utils.module_loading import module_has_submodule

from turbo_tasks import conf, rendering

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser
    from django.contrib.auth.models import AnonymousUser

GROUP_PREFIX = "turbo_tasks."


class StreamRef(TypedDict):
    """A stream's identity as it travels in jobs and signed names."""

    stream: str
    args: list[Any]
    kwargs: dict[str, Any]


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
        action: str,
        target: str | None,
        targets: str | None,
        template: str | None = None,
        context: dict[str, Any] | None = None,
        text: str | None = None,
        group: str | None = None,
    ) -> None:
        self.stream, self.action, self.target, self.targets = stream, action, target, targets
        self._template, self._context, self._text = template, context, text
        self._html: str | None = None
        # The Channels group it is pushed to (the caller may have it already).
        self.group = stream.group_name if group is None else group

    @property
    def html(self) -> str:
        if self._html is None:
            self._html = rendering.render_frame(
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


# Set by the worker (and turbo_tasks.testing) while hooks run: actions are collected here
# (and rendered before the push) instead of being deferred.
collector: ContextVar[list[Broadcast] | None] = ContextVar("turbo_tasks_collector", default=None)


def json_value(value: Any) -> Any:
    """Return ``value`` as JSON primitives (UUIDs, dates, Decimals become strings)."""
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        return value
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


class Stream:
    """A stream pages can subscribe to, e.g. a per-user notifications stream::

        class NotificationStream(turbo.Stream):
            def __init__(self, user_id):
                self.user_id = user_id

            def user_passes_test(self, user):
                return user.is_authenticated and user.pk == self.user_id

    Declare it in ``<app>/streams.py``. Its init arguments must be JSON-serialisable:
    they are part of the signed name and rebuild the stream on subscribe and in workers.
    """

    _init_args: tuple[Any, ...]
    _init_kwargs: dict[str, Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> Stream:
        self = super().__new__(cls)
        self._init_args = args
        self._init_kwargs = kwargs
        return self

    # -- identity --------------------------------------------------------------------

    @classmethod
    def stream_name(cls) -> str:
        """The registered name, ``"<app_label>.<ClassName>"``."""
        return registry.name_of(cls)

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
        ref = self.ref()
        payload: list[Any] = [ref["stream"], ref["args"]]
        if ref["kwargs"]:
            payload.append(ref["kwargs"])
        return signing.dumps(payload, salt=conf.get("SIGNING_SALT"), compress=True)

    @property
    def group_name(self) -> str:
        """The Channels group frames for this stream are sent to."""
        return group_name(self.ref())

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.ref() == self.ref()  # type: ignore[attr-defined]

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

    # -- actions ---------------------------------------------------------------------

    def append(
        self,
        template: str | None = None,
        context: dict[str, Any] | None = None,
        *,
        id: str | None = None,
        selector: str | None = None,
        text: str | None = None,
    ) -> None:
        """Send to this stream (``selector=`` sends ``targets="…"`` instead)::

            <turbo-stream action="append" target="{id}"><template>…</template></turbo-stream>

        The rendered template, or ``text`` escaped, is added at the end of the target.
        """
        self._send("append", template, context, id, selector, text)

    def prepend(
        self,
        template: str | None = None,
        context: dict[str, Any] | None = None,
        *,
        id: str | None = None,
        selector: str | None = None,
        text: str | None = None,
    ) -> None:
        """Send to this stream (``selector=`` sends ``targets="…"`` instead)::

            <turbo-stream action="prepend" target="{id}"><template>…</template></turbo-stream>

        The content is added at the start of the target.
        """
        self._send("prepend", template, context, id, selector, text)

    def replace(
        self,
        template: str | None = None,
        context: dict[str, Any] | None = None,
        *,
        id: str | None = None,
        selector: str | None = None,
        text: str | None = None,
    ) -> None:
        """Send to this stream (``selector=`` sends ``targets="…"`` instead)::

            <turbo-stream action="replace" target="{id}"><template>…</template></turbo-stream>

        The target element itself is replaced by the content.
        """
        self._send("replace", template, context, id, selector, text)

    def update(
        self,
        template: str | None = None,
        context: dict[str, Any] | None = None,
        *,
        id: str | None = None,
        selector: str | None = None,
        text: str | None = None,
    ) -> None:
        """Send to this stream (``selector=`` sends ``targets="…"`` instead)::

            <turbo-stream action="update" target="{id}"><template>…</template></turbo-stream>

        The target's children are replaced by the content.
        """
        self._send("update", template, context, id, selector, text)

    def before(
        self,
        template: str | None = None,
        context: dict[str, Any] | None = None,
        *,
        id: str | None = None,
        selector: str | None = None,
        text: str | None = None,
    ) -> None:
        """Send to this stream (``selector=`` sends ``targets="…"`` instead)::

            <turbo-stream action="before" target="{id}"><template>…</template></turbo-stream>

        The content is inserted before the target.
        """
        self._send("before", template, context, id, selector, text)

    def after(
        self,
        template: str | None = None,
        context: dict[str, Any] | None = None,
        *,
        id: str | None = None,
        selector: str | None = None,
        text: str | None = None,
    ) -> None:
        """Send to this stream (``selector=`` sends ``targets="…"`` instead)::

            <turbo-stream action="after" target="{id}"><template>…</template></turbo-stream>

        The content is inserted after the target.
        """
        self._send("after", template, context, id, selector, text)

    def remove(self, *, id: str | None = None, selector: str | None = None) -> None:
        """Send to this stream (``selector=`` sends ``targets="…"`` instead)::

            <turbo-stream action="remove" target="{id}"></turbo-stream>

        The target is removed from the page.
        """
        self._send("remove", None, None, id, selector, None)

    def _send(
        self,
        action: str,
        template: str | None,
        context: dict[str, Any] | None,
        id: str | None,
        selector: str | None,
        text: str | None,
    ) -> None:
        rendering.check_action(action)
        rendering.check_target(id, selector)
        if action == "remove":
            template = context = text = None
        elif (template is None) == (text is None):
            raise ValueError(
                f"{action}() needs a template name (with an optional context) "
                f"or text=, not {'both' if text is not None else 'neither'}."
            )
        ref = self.ref()  # a pk-less ModelStream raises here, in the caller's code
        collected = collector.get()
        if collected is not None:
            collected.append(
                Broadcast(self, action, id, selector, template, context, text, group_name(ref))
            )
            return
        from turbo_tasks import signals

        job: dict[str, Any] = {"action": "broadcast", "stream": ref, "turbo_action": action}
        job["target" if id is not None else "targets"] = id if id is not None else selector
        if text is not None:
            job["text"] = text
        elif template is not None:
            job["template"] = template
            job["context"] = encode_context(context or {})
        signals.enqueue(job, using=self._database())

    def _database(self) -> str:
        from django.db import DEFAULT_DB_ALIAS

        return DEFAULT_DB_ALIAS


class ModelStream(Stream):
    """The stream of one model's rows, reachable as ``instance.stream``.

    ``on_save`` and ``on_delete`` run in a Celery worker after the write commits::

        class MessageStream(turbo.ModelStream):
            class Meta:
                model = Message

            def on_save(self, message, created, *args, **kwargs):
                if created:
                    message.room.stream.append("chat/message.html", {"message": message},
                                               id="messages")
    """

    model: ClassVar[type[models.Model]]

    def __init__(self, instance: models.Model | None = None, *, pk: Any = None) -> None:
        self._instance = instance
        self._pk = pk

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
        if len(ref["args"]) != 1 or ref["kwargs"]:
            raise TypeError(f"{cls.__name__} takes exactly one pk")
        return cls(pk=cls.model._meta.pk.to_python(ref["args"][0]))

    def _database(self) -> str:
        if self._instance is not None and self._instance._state.db:
            return self._instance._state.db
        return super()._database()

    # -- hooks (run by the worker) -----------------------------------------------------

    def on_save(self, instance: Any, created: bool, *args: Any, **kwargs: Any) -> None:
        """Called in a worker after a save of ``instance`` commits; the row is reloaded."""

    def on_delete(self, instance: Any, *args: Any, **kwargs: Any) -> None:
        """Called in a worker after a delete commits; ``instance`` is rebuilt from a snapshot
        taken at delete time, so its fields and foreign keys work as before the delete."""


class _StreamDescriptor:
    """``instance.stream``: a ModelStream bound to the instance (and so to its current pk)."""

    def __init__(self, stream_class: type[ModelStream]) -> None:
        self.stream_class = stream_class

    def __get__(self, instance: models.Model | None, owner: type) -> Any:
        if instance is None:
            return self.stream_class
        return self.stream_class(instance)


def group_name(ref: StreamRef) -> str:
    canonical = json.dumps(
        [ref["stream"], ref["args"], ref["kwargs"]], sort_keys=True, separators=(",", ":")
    )
    return GROUP_PREFIX + hashlib.sha256(canonical.encode()).hexdigest()[:40]


class StreamRejected(Exception):
    """A signed name that does not resolve to a stream; ``reason`` is sent to the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def resolve_signed_name(signed_name: str) -> Stream:
    """Verify ``signed_name`` and rebuild its stream, or raise StreamRejected."""
    try:
        payload = signing.loads(
            signed_name,
            salt=conf.get("SIGNING_SALT"),
            max_age=conf.get("SIGNED_NAME_MAX_AGE"),
        )
    except signing.SignatureExpired:
        raise StreamRejected("expired") from None
    except (signing.BadSignature, ValueError):
        # ValueError covers payloads that decompress or decode badly.
        raise StreamRejected("invalid_signature") from None
    if (
        not isinstance(payload, list)
        or len(payload) not in (2, 3)
        or not isinstance(payload[0], str)
        or not isinstance(payload[1], list)
        or (len(payload) == 3 and not isinstance(payload[2], dict))
    ):
        raise StreamRejected("invalid_signature")
    ref: StreamRef = {
        "stream": payload[0],
        "args": payload[1],
        "kwargs": payload[2] if len(payload) == 3 else {},
    }
    return stream_from_ref(ref, rejected=StreamRejected("unknown_stream"))


def stream_from_ref(ref: StreamRef, *, rejected: Exception | None = None) -> Stream:
    cls = registry.get(ref["stream"])
    try:
        if cls is None:
            raise LookupError(f"No stream named {ref['stream']!r} is registered")
        return cls.from_ref(ref)
    except (LookupError, TypeError, ValueError, ValidationError):
        if rejected is not None:
            raise rejected from None
        raise


# -- context that travels with deferred actions -------------------------------------------

_MODEL_KEY = "__turbo_model__"


def encode_context(context: dict[str, Any], _path: str = "") -> dict[str, Any]:
    """Turn a template context into JSON, model instances into ``{"__turbo_model__": …}``."""
    return {key: _encode(value, f"{_path}{key}") for key, value in context.items()}


def _encode(value: Any, path: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, models.Model):
        if value.pk is None:
            raise TypeError(f"Context value {path!r} is an unsaved {type(value).__name__}.")
        return {_MODEL_KEY: value._meta.label_lower, "pk": json_value(value.pk)}
    if isinstance(value, (list, tuple)):
        return [_encode(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _encode(v, f"{path}.{k}") for k, v in value.items()}
    raise TypeError(
        f"Context value {path!r} ({type(value).__name__}) cannot travel to a worker: "
        f"use JSON values, lists, dicts and saved model instances."
    )


def decode_context(context: dict[str, Any], using: str) -> dict[str, Any]:
    """Reverse encode_context; referenced rows are reloaded (missing ones become None)."""
    return {key: _decode(value, using) for key, value in context.items()}


def _decode(value: Any, using: str) -> Any:
    if isinstance(value, list):
        return [_decode(item, using) for item in value]
    if isinstance(value, dict):
        if _MODEL_KEY in value:
            model = apps.get_model(value[_MODEL_KEY])
            return model._base_manager.using(using).filter(pk=value["pk"]).first()
        return {k: _decode(v, using) for k, v in value.items()}
    return value


# -- registry ------------------------------------------------------------------------------


class _Registry:
    def __init__(self) -> None:
        self._by_name: dict[str, type[Stream]] = {}
        self._names: dict[type[Stream], str] = {}
        self._by_model: dict[type[models.Model], type[ModelStream]] = {}

    def register(self, cls: type[Stream], app_label: str) -> None:
        name = f"{app_label}.{cls.__name__}"
        if issubclass(cls, ModelStream):
            self._register_model_stream(cls)
        self._by_name[name] = cls
        self._names[cls] = name

    def _register_model_stream(self, cls: type[ModelStream]) -> None:
        meta = getattr(cls, "Meta", None)
        model = getattr(meta, "model", None)
        if not (isinstance(model, type) and issubclass(model, models.Model)):
            raise ImproperlyConfigured(
                f"{cls.__module__}.{cls.__qualname__} must name its model: "
                f"class Meta: model = YourModel"
            )
        existing = self._by_model.get(model)
        if existing is not None and _qualname(existing) != _qualname(cls):
            raise ImproperlyConfigured(
                f"{model._meta.label} has two ModelStreams, {_qualname(existing)} and "
                f"{_qualname(cls)}; a model can have only one (it becomes instance.stream)."
            )
        current = model.__dict__.get("stream")
        if current is not None and not isinstance(current, _StreamDescriptor):
            raise ImproperlyConfigured(
                f"{_qualname(cls)} cannot add .stream to {model._meta.label}: "
                f"the model already has an attribute named 'stream'."
            )
        cls.model = model
        self._by_model[model] = cls
        model.stream = _StreamDescriptor(cls)  # type: ignore[attr-defined]

    def get(self, name: str) -> type[Stream] | None:
        return self._by_name.get(name)

    def name_of(self, cls: type[Stream]) -> str:
        try:
            return self._names[cls]
        except KeyError:
            raise ImproperlyConfigured(
                f"{_qualname(cls)} is not a registered stream: declare it in the streams.py "
                f"module of an installed app so it is found at startup."
            ) from None

    def for_model(self, model: type[models.Model]) -> type[ModelStream] | None:
        return self._by_model.get(model)

    def model_streams(self) -> dict[type[models.Model], type[ModelStream]]:
        return dict(self._by_model)


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


registry = _Registry()


def autodiscover() -> None:
    """Import ``<app>/streams.py`` of every installed app and register the stream classes
    it defines (imported classes, e.g. shared base classes, are registered where defined)."""
    for app_config in apps.get_app_configs():
        if app_config.name == "turbo_tasks" or not module_has_submodule(
            app_config.module, "streams"
        ):
            continue
        module = import_module(f"{app_config.name}.streams")
        for value in list(vars(module).values()):
            if (
                isinstance(value, type)
                and issubclass(value, Stream)
                and value not in (Stream, ModelStream)
                and value.__module__ == module.__name__
                and not getattr(getattr(value, "Meta", None), "abstract", False)
            ):
                registry.register(value, app_config.label)
