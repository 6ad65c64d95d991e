"""The template context of a deferred action, as it travels in a broadcast job.

JSON values travel as they are. Model instances become row references, reloaded in the
worker; a queryset becomes the list of its rows' references, taken when the action is
called (the worker sees a list of the rows reloaded, in that order, without those deleted
since); dates, times, decimals, UUIDs and durations travel tagged and come back as their
type::

    {"message": {"__turbo_model__": "chat.message", "pk": 5}, "title": "Hi",
     "messages": {"__turbo_rows__": "chat.message", "pks": [5, 7]},
     "at": {"__turbo_value__": "datetime", "value": "2026-12-07T10:38:25.112233+00:00"},
     "price": {"__turbo_value__": "decimal", "value": "9.90"}}
"""

from __future__ import annotations

import datetime
import decimal
import uuid
from collections.abc import Callable
from typing import Any

from django.apps import apps
from django.db import models
from django.utils.dateparse import parse_duration
from django.utils.duration import duration_iso_string

from turbo_tasks.exceptions import InvalidJob
from turbo_tasks.snapshots import check_pk, json_value

# A model instance travels as {MODEL_KEY: "app.model", "pk": …}. A user's dict that uses a
# reserved key travels wrapped as {DICT_KEY: {…}}, so it is never read as a row reference.
MODEL_KEY = "__turbo_model__"
ROWS_KEY = "__turbo_rows__"
VALUE_KEY = "__turbo_value__"
DICT_KEY = "__turbo_dict__"
_RESERVED = (MODEL_KEY, ROWS_KEY, VALUE_KEY, DICT_KEY)
# A queryset travels as its pks: a bound on what one job carries.
MAX_QUERYSET_ROWS = 1000

# Values that travel as {VALUE_KEY: kind, "value": text}: (type, kind, to text, from text).
# datetime before date: a datetime is a date.
_VALUES: tuple[tuple[type, str, Callable[[Any], str], Callable[[str], Any]], ...] = (
    (datetime.datetime, "datetime", datetime.datetime.isoformat, datetime.datetime.fromisoformat),
    (datetime.date, "date", datetime.date.isoformat, datetime.date.fromisoformat),
    (datetime.time, "time", datetime.time.isoformat, datetime.time.fromisoformat),
    (datetime.timedelta, "duration", duration_iso_string, parse_duration),
    (decimal.Decimal, "decimal", str, decimal.Decimal),
    (uuid.UUID, "uuid", str, uuid.UUID),
)


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
    for kind_type, kind, to_text, _ in _VALUES:
        if isinstance(value, kind_type):
            return {VALUE_KEY: kind, "value": to_text(value)}
    if isinstance(value, models.QuerySet):
        pks = list(value.values_list("pk", flat=True)[: MAX_QUERYSET_ROWS + 1])
        if len(pks) > MAX_QUERYSET_ROWS:
            raise TypeError(
                f"Context value {path!r} is a queryset of more than {MAX_QUERYSET_ROWS} rows: "
                f"each travels to the worker; slice it, or render the page differently."
            )
        return {ROWS_KEY: value.model._meta.label_lower, "pks": [json_value(pk) for pk in pks]}
    if isinstance(value, (list, tuple)):
        return [_encode(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        encoded = {k: _encode(v, f"{path}.{k}") for k, v in value.items()}
        return {DICT_KEY: encoded} if any(k in value for k in _RESERVED) else encoded
    raise TypeError(
        f"Context value {path!r} ({type(value).__name__}) cannot travel to a worker: use "
        f"JSON values, lists, dicts, saved model instances, querysets, dates, times, "
        f"durations, decimals and UUIDs, or pass what the template shows of it."
    )


def decode_context(context: dict[str, Any], using: str) -> dict[str, Any]:
    """Reverse encode_context; referenced rows are reloaded (missing ones become None, and
    are left out of a queryset's list)."""

    def load(model: type[models.Model], pks: list[Any]) -> list[models.Model | None]:
        found = model._base_manager.using(using).in_bulk(pks)
        return [found.get(pk) for pk in pks]

    return {k: _decode(v, "job", f"context.{k}", using, load) for k, v in context.items()}


def check_context(context: dict[str, Any], where: str, using: str) -> None:
    """Raise InvalidJob for a value in an encoded context that cannot be decoded (an unknown
    model, a pk or a tagged value that does not parse); touches no row."""
    for key, value in context.items():
        _decode(value, where, f"context.{key}", using, lambda model, pks: [None] * len(pks))


Loader = Callable[[Any, list[Any]], list[Any]]


def _decode(value: Any, where: str, path: str, using: str, load: Loader) -> Any:
    if isinstance(value, list):
        return [_decode(v, where, f"{path}[{i}]", using, load) for i, v in enumerate(value)]
    if not isinstance(value, dict):
        return value
    if set(value) == {DICT_KEY} and isinstance(value[DICT_KEY], dict):
        value = value[DICT_KEY]
    elif MODEL_KEY in value:
        model = _model(value, MODEL_KEY, "pk", where, path)
        return load(model, [check_pk(model, value["pk"], f"{where}: '{path}.pk'", using)])[0]
    elif ROWS_KEY in value:
        model = _model(value, ROWS_KEY, "pks", where, path)
        if not isinstance(value["pks"], list) or len(value["pks"]) > MAX_QUERYSET_ROWS:
            raise InvalidJob(f"{where}: '{path}.pks' must be a list of at most 1000 pks")
        pks = [
            check_pk(model, pk, f"{where}: '{path}.pks[{i}]'", using)
            for i, pk in enumerate(value["pks"])
        ]
        return [row for row in load(model, pks) if row is not None]
    elif VALUE_KEY in value:
        return _value(value, where, path)
    return {k: _decode(v, where, f"{path}.{k}", using, load) for k, v in value.items()}


def _model(value: dict[str, Any], key: str, field: str, where: str, path: str) -> Any:
    label = value.get(key)
    try:
        model = apps.get_model(label) if isinstance(label, str) else None
    except (LookupError, ValueError):
        model = None
    if model is None or set(value) != {key, field}:
        raise InvalidJob(f"{where}: '{path}': {value!r} is not a valid row reference")
    return model


def _value(value: dict[str, Any], where: str, path: str) -> Any:
    kind, text = value.get(VALUE_KEY), value.get("value")
    for _, known, _, from_text in _VALUES:
        if kind == known and set(value) == {VALUE_KEY, "value"} and isinstance(text, str):
            try:
                decoded = from_text(text)
            except (ValueError, ArithmeticError):
                decoded = None
            if decoded is not None:
                return decoded
    raise InvalidJob(f"{where}: '{path}': {value!r} is not a valid {kind or 'tagged'} value")
