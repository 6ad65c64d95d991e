"""The stream registry: ``<app>/streams.py`` discovery, ``instance.stream``, and turning a
stream's identity (a job's ref, a page's signed name) back into a stream."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.db import models
from django.utils.module_loading import module_has_submodule

from turbo_tasks import signing, snapshots
from turbo_tasks.exceptions import StreamRejected
from turbo_tasks.signing import StreamRef
from turbo_tasks.streams import ModelStream, Stream


class _StreamDescriptor:
    """``instance.stream``: a ModelStream bound to the instance (and so to its current pk)."""

    def __init__(self, stream_class: type[ModelStream]) -> None:
        self.stream_class = stream_class

    def __get__(self, instance: models.Model | None, owner: type) -> Any:
        if instance is None:
            return self.stream_class
        return self.stream_class(instance)


class Registry:
    def __init__(self) -> None:
        self._by_name: dict[str, type[Stream]] = {}
        self._by_model: dict[type[models.Model], type[ModelStream]] = {}

    def register(self, cls: type[Stream], app_label: str) -> None:
        meta = getattr(cls, "Meta", None)
        if meta is not None and hasattr(meta, "exclude_sender"):
            cls.exclude_sender = bool(meta.exclude_sender)
        if issubclass(cls, ModelStream):
            self._register_model_stream(cls)
        name = f"{app_label}.{cls.__name__}"
        cls._registered_name = name
        self._by_name[name] = cls

    def _register_model_stream(self, cls: type[ModelStream]) -> None:
        meta = getattr(cls, "Meta", None)
        model = getattr(meta, "model", None)
        if not (isinstance(model, type) and issubclass(model, models.Model)):
            raise ImproperlyConfigured(
                f"{_qualname(cls)} must name its model: class Meta: model = YourModel "
                f"(or, for a base class, class Meta: abstract = True)"
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
        try:
            attnames = snapshots.snapshot_attnames(
                model,
                fields=getattr(meta, "snapshot_fields", None),
                exclude=getattr(meta, "snapshot_exclude", None),
            )
        except ValueError as exc:
            raise ImproperlyConfigured(f"{_qualname(cls)}: {exc}") from None
        cls.model = model
        cls.snapshot_attnames = attnames
        if meta is not None and hasattr(meta, "broadcasts_refreshes"):
            cls.broadcasts_refreshes = bool(meta.broadcasts_refreshes)
        self._by_model[model] = cls
        model.stream = _StreamDescriptor(cls)  # type: ignore[attr-defined]

    def unregister(self, cls: type[Stream]) -> None:
        """Forget a stream class registered by hand (e.g. in a test)."""
        self._by_name.pop(cls.__dict__.get("_registered_name") or "", None)
        cls._registered_name = None

    def names(self) -> list[str]:
        return list(self._by_name)

    def get(self, name: str) -> type[Stream] | None:
        return self._by_name.get(name)

    def for_model(self, model: type[models.Model]) -> type[ModelStream] | None:
        return self._by_model.get(model)

    def model_streams(self) -> dict[type[models.Model], type[ModelStream]]:
        return dict(self._by_model)

    # Which writes broadcast: the receivers (turbo_tasks.signals) and turbo.saved()/deleted()
    # (turbo_tasks.bulk) both ask here.

    def saving_models(self) -> list[type[models.Model]]:
        """The models whose saves broadcast (their stream overrides ``on_save``)."""
        return [m for m, cls in self._by_model.items() if cls.overrides("on_save")]

    def deleting_models(self) -> list[type[models.Model]]:
        """The models whose deletes broadcast (their stream overrides ``on_delete``)."""
        return [m for m, cls in self._by_model.items() if cls.overrides("on_delete")]

    def broadcasts_saves(self, model: type[models.Model]) -> bool:
        cls = self._by_model.get(model)
        return cls is not None and cls.overrides("on_save")

    def snapshot_attnames(self, model: type[models.Model]) -> tuple[str, ...] | None:
        """What a delete snapshot of ``model`` holds; None when its deletes do not
        broadcast."""
        cls = self._by_model.get(model)
        return cls.snapshot_attnames if cls is not None and cls.overrides("on_delete") else None


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


registry = Registry()


def is_abstract(cls: type[Stream]) -> bool:
    """A stream class whose *own* Meta says ``abstract = True`` (not inherited, as with
    Django models): a base for other streams, never registered."""
    meta = cls.__dict__.get("Meta")
    return bool(meta is not None and vars(meta).get("abstract", False))


def autodiscover() -> None:
    """Import ``<app>/streams.py`` of every installed app and register the stream classes
    it defines, and those it imports from a module that is not a ``streams.py`` (e.g. a
    component in ``chat/components.py``), under the app's label. Classes imported from
    another app's ``streams.py`` (shared base classes) are registered where defined."""
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
                and _declared_here(value, module.__name__)
                and not is_abstract(value)
            ):
                registry.register(value, app_config.label)


def _declared_here(cls: type[Stream], module: str) -> bool:
    if cls.__module__ == module:
        return True
    defined_in_streams = cls.__module__.rsplit(".", 1)[-1] == "streams"
    return not defined_in_streams and cls.__dict__.get("_registered_name") is None


def stream_from_ref(ref: StreamRef) -> Stream:
    """Rebuild a stream from its identity; LookupError for a name nobody registered."""
    cls = registry.get(ref["stream"])
    if cls is None:
        raise LookupError(f"No stream named {ref['stream']!r} is registered")
    return cls.from_ref(ref)


def resolve_signed_name(signed_name: str) -> Stream:
    """Verify ``signed_name`` and rebuild its stream, or raise StreamRejected.

    The stream's constructor is user code and may touch the database: call this from
    synchronous code (the consumer runs it in a thread).
    """
    return resolve_ref(signing.unsign(signed_name))


def resolve_ref(ref: StreamRef) -> Stream:
    """Rebuild the stream of a verified signed name's ``ref``; StreamRejected
    ("unknown_stream") when no registered stream takes it."""
    try:
        return stream_from_ref(ref)
    except (LookupError, TypeError, ValueError, ValidationError):
        raise StreamRejected("unknown_stream") from None
