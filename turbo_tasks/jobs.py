"""The job format: what the write path records and the worker runs.

A job is a small JSON object, readable in Flower and re-runnable from it::

    {"action": "save", "model": "chat.message", "pk": 5, "created": true}
    {"action": "save", "model": "chat.room", "pk": 1, "created": false, "update_fields": ["name"]}
    {"action": "delete", "model": "chat.message", "pk": 5, "fields": {"id": 5, "room_id": 1}}
    {"action": "broadcast", "stream": {"stream": "chat.RoomStream", "args": [1], "kwargs": {}},
     "turbo_action": "append", "target": "messages", "template": "chat/message.html",
     "context": {"message": {"__turbo_model__": "chat.message", "pk": 5}},
     "exclude_sender": true, "request": {"language": "fr", "sender": "bq3n…"}}
    {"action": "broadcast", "stream": {…}, "turbo_action": "refresh", "debounce": true}
    {"action": "recheck", "stream": {"stream": "chat.RoomStream", "args": [1], "kwargs": {}}}

Any job may carry ``request`` (turbo_tasks.request_context). Everything here is pure data
handling: building jobs, validating untrusted ones (a task's arguments may have been edited
by hand), delete snapshots. The template-context codec is turbo_tasks.codec.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Collection
from typing import Any, Literal, TypedDict

from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connections, models
from django.db.models.base import DEFERRED

from turbo_tasks.exceptions import InvalidJob

# Far above what a publisher sends (MAX_JOBS_PER_MESSAGE); a bound for hand-edited args.
MAX_JOBS_PER_TASK = 100_000


class StreamRef(TypedDict):
    """A stream's identity as it travels in jobs and signed names."""

    stream: str
    args: list[Any]
    kwargs: dict[str, Any]


class _AnyJob(TypedDict, total=False):
    request: dict[str, str]  # language, time_zone, sender, request_id


class _RowJob(_AnyJob):
    model: str  # app_label.model_name
    pk: int | str


class _SaveJobRequired(_RowJob):
    action: Literal["save"]
    created: bool


class SaveJob(_SaveJobRequired, total=False):
    update_fields: list[str]  # sorted; absent when save() named none


class DeleteJob(_RowJob):
    action: Literal["delete"]
    fields: dict[str, Any]  # the snapshot: attname -> JSON value


class _BroadcastJobRequired(_AnyJob):
    action: Literal["broadcast"]
    stream: StreamRef
    turbo_action: str


class BroadcastJob(_BroadcastJobRequired, total=False):
    target: str  # exactly one of target and targets, except for refresh (neither)
    targets: str
    template: str  # at most one of template (with context) and text
    context: dict[str, Any]  # encoded with turbo_tasks.codec.encode_context
    text: str
    method: Literal["morph"]  # replace and update only
    exclude_sender: bool  # skip request.sender's socket
    debounce: bool  # refresh only: at most one per stream per REFRESH_DEBOUNCE_SECONDS
    trailing: str  # refresh only: the delayed send of a debounced refresh (its token)


class RecheckJob(_AnyJob):
    action: Literal["recheck"]
    stream: StreamRef


Job = SaveJob | DeleteJob | BroadcastJob | RecheckJob


def json_value(value: Any) -> Any:
    """Return ``value`` as JSON primitives (UUIDs, dates, Decimals become strings)."""
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        return value
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


# -- builders ----------------------------------------------------------------------------


def save_job(
    instance: models.Model, created: bool, update_fields: Collection[str] | None = None
) -> SaveJob:
    job: SaveJob = {
        "action": "save",
        "model": instance._meta.label_lower,
        "pk": json_value(instance.pk),
        "created": bool(created),
    }
    if update_fields is not None:
        job["update_fields"] = sorted(update_fields)
    return job


def delete_job(instance: models.Model, attnames: Collection[str]) -> DeleteJob:
    """Capture the row now: Django sets ``instance.pk = None`` once the delete receivers ran."""
    return {
        "action": "delete",
        "model": instance._meta.label_lower,
        "pk": json_value(instance.pk),
        "fields": snapshot(instance, attnames),
    }


def broadcast_job(
    ref: StreamRef,
    action: str,
    *,
    target: str | None,
    targets: str | None,
    template: str | None,
    context: dict[str, Any] | None,
    text: str | None,
    method: str | None = None,
    exclude_sender: bool = False,
    debounce: bool = False,
) -> BroadcastJob:
    """``context`` is already encoded (turbo_tasks.codec.encode_context)."""
    job: BroadcastJob = {"action": "broadcast", "stream": ref, "turbo_action": action}
    if target is not None:
        job["target"] = target
    elif targets is not None:
        job["targets"] = targets
    if text is not None:
        job["text"] = text
    elif template is not None:
        job["template"] = template
        job["context"] = context or {}
    if method is not None:
        job["method"] = "morph"
    if exclude_sender:
        job["exclude_sender"] = True
    if debounce:
        job["debounce"] = True
    return job


# -- delete snapshots --------------------------------------------------------------------

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


# -- validation ----------------------------------------------------------------------------


def validate(jobs: Any) -> list[Job]:
    """Check the shape of a task's jobs (before any hook runs); InvalidJob names the job
    and the field. Model-dependent checks (pk range, snapshot types) come with
    ``check_pk`` and ``rebuild``."""
    if not isinstance(jobs, list):
        raise InvalidJob(f"jobs must be a list, not {type(jobs).__name__}")
    if len(jobs) > MAX_JOBS_PER_TASK:
        raise InvalidJob(f"{len(jobs)} jobs in one task; at most {MAX_JOBS_PER_TASK}")
    for index, job in enumerate(jobs):
        _check(job, f"job {index}")
    return jobs


def validate_outbox(ids: Any) -> list[int] | None:
    """Check a task's ``outbox`` argument (the outbox rows its jobs came from, or None)
    before it reaches a query; InvalidJob names ``outbox`` and what is wrong."""
    if ids is None:
        return None
    if not isinstance(ids, list):
        raise InvalidJob(f"outbox must be a list of row ids or null, not {type(ids).__name__}")
    if len(ids) > MAX_JOBS_PER_TASK:
        raise InvalidJob(f"outbox: {len(ids)} row ids; at most {MAX_JOBS_PER_TASK}")
    for index, value in enumerate(ids):
        if type(value) is not int or not 0 < value < 2**63:
            raise InvalidJob(f"outbox {index}: must be a positive integer row id, not {value!r}")
    return ids


def _check(job: Any, where: str) -> None:
    from turbo_tasks.request_context import problem

    if not isinstance(job, dict):
        raise InvalidJob(f"{where}: must be an object, not {type(job).__name__}")
    if "request" in job and (why := problem(job["request"])) is not None:
        raise InvalidJob(f"{where}: 'request': {why}")
    action = job.get("action")
    if action in ("save", "delete"):
        if not isinstance(job.get("model"), str):
            raise InvalidJob(f"{where}: 'model' must be an app_label.model_name string")
        if type(job.get("pk")) not in (int, str):
            raise InvalidJob(f"{where}: 'pk' must be an integer or a string")
        if action == "save" and not isinstance(job.get("created"), bool):
            raise InvalidJob(f"{where}: 'created' must be true or false")
        names = job.get("update_fields", [])
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise InvalidJob(f"{where}: 'update_fields' must be a list of field names")
        if action == "delete" and not isinstance(job.get("fields"), dict):
            raise InvalidJob(f"{where}: 'fields' must be an object")
    elif action in ("broadcast", "recheck"):
        ref = job.get("stream")
        if not (
            isinstance(ref, dict)
            and isinstance(ref.get("stream"), str)
            and isinstance(ref.get("args"), list)
            and isinstance(ref.get("kwargs"), dict)
        ):
            raise InvalidJob(f"{where}: 'stream' must be {{stream, args, kwargs}}")
        if action == "broadcast":
            _check_broadcast(job, where)
    else:
        raise InvalidJob(f"{where}: 'action' must be save, delete, broadcast or recheck")


def _check_broadcast(job: dict[str, Any], where: str) -> None:
    from turbo_tasks.rendering import check_action

    action = job.get("turbo_action", "")
    try:
        check_action(action)
    except ValueError as exc:
        raise InvalidJob(f"{where}: 'turbo_action': {exc}") from None
    targets = [job.get(k) for k in ("target", "targets") if k in job]
    if action == "refresh":
        if targets or "template" in job or "text" in job:
            raise InvalidJob(f"{where}: a refresh takes no target, template or text")
    elif len(targets) != 1 or not isinstance(targets[0], str):
        raise InvalidJob(f"{where}: needs one string 'target' or 'targets'")
    for key in ("template", "text", "trailing"):
        if key in job and not isinstance(job[key], str):
            raise InvalidJob(f"{where}: {key!r} must be a string")
    for key in ("exclude_sender", "debounce"):
        if not isinstance(job.get(key, False), bool):
            raise InvalidJob(f"{where}: {key!r} must be true or false")
    if "method" in job and (job["method"] != "morph" or action not in ("replace", "update")):
        raise InvalidJob(f"{where}: 'method' can only be \"morph\", on replace or update")
    if action != "refresh" and ("debounce" in job or "trailing" in job):
        raise InvalidJob(f"{where}: only a refresh can be debounced")
    if not isinstance(job.get("context", {}), dict):
        raise InvalidJob(f"{where}: 'context' must be an object")


def redact(jobs: Any) -> Any:
    """``jobs`` with secret-looking snapshot fields and context keys masked: what Flower's
    args and error logs show. Returns ``jobs`` itself when there is nothing to mask."""
    if not isinstance(jobs, list):
        return jobs
    shown = [_redact_job(job) for job in jobs]
    return jobs if all(a is b for a, b in zip(shown, jobs, strict=True)) else shown


def _redact_job(job: Any) -> Any:
    if not isinstance(job, dict):
        return job
    fields = job.get("fields")
    if isinstance(fields, dict) and any(is_secret(k) for k in fields):
        job = {**job, "fields": {k: REDACTED if is_secret(k) else v for k, v in fields.items()}}
    context = job.get("context")
    if isinstance(context, dict):
        shown = _redact_value(context)
        if shown is not context:
            job = {**job, "context": shown}
    return job


def _redact_value(value: Any) -> Any:
    if isinstance(value, dict):
        shown = {
            k: REDACTED if isinstance(k, str) and is_secret(k) else _redact_value(v)
            for k, v in value.items()
        }
        return value if all(shown[k] is value[k] for k in value) else shown
    if isinstance(value, list):
        items = [_redact_value(item) for item in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    return value
