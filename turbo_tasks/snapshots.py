"""Delete snapshots: which fields of a row a delete job keeps, taking them, and rebuilding
the row from them in a worker; and turning a job's JSON values back into field values.

A snapshot is the row's concrete field values by attname, as JSON primitives::

    {"id": 5, "room_id": 1, "text": "hello", "created_at": "2026-12-07T09:57:11.123Z"}

Fields named like credentials are left out unless a stream's Meta asks for them, and are
masked wherever jobs are shown (turbo_tasks.jobs.redact).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Collection
from typing import Any

from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connections, models
from django.db.models.base import DEFERRED

from turbo_tasks.exceptions import InvalidJob


def json_value(value: Any) -> Any:
    """Return ``value`` as JSON primitives (UUIDs, dates, Decimals become strings)."""
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        return value
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


# Field names that hold credentials: left out of delete snapshots unless a stream's Meta
# asks for them, and masked wherever jobs are shown (Flower's args, error logs).
_SECRET_NAME = re.compile(
    r"(?:^|_)(?:password|passwd|passphrase|secret|token|api_?key|private_?key|signature|"
    r"salt|otp|totp)s?(?:_|$)",
    re.IGNORECASE,
)
REDACTED = "********"


def is_secret(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def snapshot_attnames(
    model: type[models.Model], fields: Any = None, exclude: Any = None
) -> tuple[str, ...]:
    """The attnames a delete snapshot of ``model`` holds, from a ModelStream's
    ``Meta.snapshot_fields`` (field names, or ``"__all__"``) and ``Meta.snapshot_exclude``.

    By default every concrete field except those named like secrets (``password``,
    ``api_token``, …). The primary key is always kept. Raises ValueError naming an
    unknown field.
    """
    concrete = {f.name: f for f in model._meta.concrete_fields}
    concrete.update({f.attname: f for f in model._meta.concrete_fields})
    for option, names in (("snapshot_fields", fields), ("snapshot_exclude", exclude)):
        if names is None or names == "__all__":
            continue
        if isinstance(names, str) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"Meta.{option} must be a list of field names, not {names!r}.")
        unknown = [n for n in names if n not in concrete]
        if unknown:
            raise ValueError(
                f"Meta.{option} names unknown field(s) of {model._meta.label}: "
                f"{', '.join(unknown)}; concrete fields are: "
                f"{', '.join(f.name for f in model._meta.concrete_fields)}."
            )
    if fields is None:
        chosen = [f for f in model._meta.concrete_fields if not is_secret(f.name)]
    elif fields == "__all__":
        chosen = list(model._meta.concrete_fields)
    else:
        wanted = {concrete[n].attname for n in fields}
        chosen = [f for f in model._meta.concrete_fields if f.attname in wanted]
    dropped = {concrete[n].attname for n in exclude or ()}
    attnames = [f.attname for f in chosen if f.attname not in dropped]
    if model._meta.pk.attname not in attnames:
        attnames.insert(0, model._meta.pk.attname)
    return tuple(attnames)


def snapshot(instance: models.Model, attnames: Collection[str]) -> dict[str, Any]:
    """The values of ``attnames`` as JSON primitives."""
    values = {}
    for field in instance._meta.concrete_fields:
        if field.attname not in attnames:
            continue
        value = field.value_from_object(instance)
        try:
            values[field.attname] = json_value(value)
        except TypeError:
            # bytes and other values JSON cannot hold: the field's own string form.
            values[field.attname] = field.value_to_string(instance)
    return values


def check_pk(model: type[models.Model], value: Any, where: str, using: str) -> Any:
    """``value`` as ``model``'s pk, or InvalidJob naming ``where``."""
    if type(value) not in (int, str):
        raise InvalidJob(f"{where}: must be an integer or a string, not {value!r}")
    return _to_python(model._meta.pk, value, where, using)


def rebuild(
    model: type[models.Model], fields: dict[str, Any], where: str, using: str
) -> models.Model:
    """The deleted row as it was, from its snapshot; fields not in it are deferred (and
    would be loaded from the database, where the row no longer is). InvalidJob names a
    value that does not fit its field."""
    names, values = [], []
    for f in model._meta.concrete_fields:
        names.append(f.attname)
        if f.attname in fields:
            values.append(_to_python(f, fields[f.attname], f"{where}: 'fields.{f.attname}'", using))
        else:
            values.append(DEFERRED)
    return model.from_db(using, names, values)


def _to_python(field: Any, value: Any, where: str, using: str) -> Any:
    if value is None:
        if field.primary_key:
            raise InvalidJob(f"{where}: the primary key cannot be null")
        return None
    target = field
    while target.is_relation:  # a foreign key holds its target's pk
        target = target.target_field
    try:
        python = target.to_python(value)
    except (ValidationError, TypeError, ValueError) as exc:
        why = " ".join(exc.messages) if isinstance(exc, ValidationError) else str(exc)
        raise InvalidJob(f"{where}: {value!r} does not fit {_label(target)}: {why}") from None
    if isinstance(python, int) and not isinstance(python, bool):
        low: int | None = None
        high: int | None = None
        with contextlib.suppress(KeyError):  # KeyError: not an integer column
            low, high = connections[using].ops.integer_field_range(target.get_internal_type())
        if (low is not None and python < low) or (high is not None and python > high):
            raise InvalidJob(f"{where}: {python} is out of range for {_label(target)}")
    return python


def _label(field: Any) -> str:
    return f"{field.model._meta.label}.{field.name} ({field.get_internal_type()})"
