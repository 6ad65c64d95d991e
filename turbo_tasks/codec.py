"""The template context of a deferred action, as it travels in a broadcast job.

Model instances become row references and are reloaded in the worker::

    {"message": {"__turbo_model__": "chat.message", "pk": 5}, "title": "Hi"}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.apps import apps
from django.db import models

from turbo_tasks.exceptions import InvalidJob
from turbo_tasks.snapshots import check_pk, json_value

# A model instance travels as {MODEL_KEY: "app.model", "pk": …}. A user's dict that uses a
# reserved key travels wrapped as {DICT_KEY: {…}}, so it is never read as a row reference.
MODEL_KEY = "__turbo_model__"
DICT_KEY = "__turbo_dict__"
_RESERVED = (MODEL_KEY, DICT_KEY)


def encode_context(context: dict[str, Any]) -> dict[str, Any]:
    """Turn a template context into JSON; model instances become row references.

    Raises TypeError naming the key of a value that cannot travel to a worker.
    """
    return {key: _encode(value, key) for key, value in context.items()}


def _encode(value: Any, path: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, models.Model):
        if value.pk is None:
            raise TypeError(f"Context value {path!r} is an unsaved {type(value).__name__}.")
        return {MODEL_KEY: value._meta.label_lower, "pk": json_value(value.pk)}
    if isinstance(value, (list, tuple)):
        return [_encode(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        encoded = {k: _encode(v, f"{path}.{k}") for k, v in value.items()}
        return {DICT_KEY: encoded} if any(k in value for k in _RESERVED) else encoded
    raise TypeError(
        f"Context value {path!r} ({type(value).__name__}) cannot travel to a worker: "
        f"use JSON values, lists, dicts and saved model instances."
    )


def decode_context(context: dict[str, Any], using: str) -> dict[str, Any]:
    """Reverse encode_context; referenced rows are reloaded (missing ones become None)."""

    def load(model: type[models.Model], pk: Any) -> models.Model | None:
        return model._base_manager.using(using).filter(pk=pk).first()

    return {k: _decode(v, "job", f"context.{k}", using, load) for k, v in context.items()}


def check_context(context: dict[str, Any], where: str, using: str) -> None:
    """Raise InvalidJob for a row reference in an encoded context that cannot be loaded
    (an unknown model, a pk that does not fit); touches no row."""
    for key, value in context.items():
        _decode(value, where, f"context.{key}", using, lambda model, pk: None)


def _decode(value: Any, where: str, path: str, using: str, load: Callable[[Any, Any], Any]) -> Any:
    if isinstance(value, list):
        return [_decode(v, where, f"{path}[{i}]", using, load) for i, v in enumerate(value)]
    if not isinstance(value, dict):
        return value
    if set(value) == {DICT_KEY} and isinstance(value[DICT_KEY], dict):
        value = value[DICT_KEY]
    elif MODEL_KEY in value:
        label = value.get(MODEL_KEY)
        try:
            model = apps.get_model(label) if isinstance(label, str) else None
        except (LookupError, ValueError):
            model = None
        if model is None or set(value) != {MODEL_KEY, "pk"}:
            raise InvalidJob(f"{where}: '{path}': {value!r} is not a valid row reference")
        return load(model, check_pk(model, value["pk"], f"{where}: '{path}.pk'", using))
    return {k: _decode(v, where, f"{path}.{k}", using, load) for k, v in value.items()}
