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
by hand) and masking secrets for display. The bottom layer of the package: it imports
only other bottom modules (signing, markup, snapshots, exceptions). Delete snapshots are
turbo_tasks.snapshots, the template-context codec is turbo_tasks.codec.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Collection
from typing import Any, Literal, TypedDict

from django.db import models

from turbo_tasks import markup
from turbo_tasks.exceptions import InvalidJob
from turbo_tasks.signing import StreamRef, token
from turbo_tasks.snapshots import REDACTED, is_secret, json_value, snapshot

# The Celery task every job travels in: ``turbo_tasks.deliver(jobs, using=..., outbox=...)``.
TASK_NAME = "turbo_tasks.deliver"
# Far above what a publisher sends (MAX_JOBS_PER_MESSAGE); a bound for hand-edited args.
MAX_JOBS_PER_TASK = 100_000


# A job's ``request`` (turbo_tasks.request_context): what it keeps of the request that
# caused it.
LOCALE_KEYS = ("language", "time_zone")  # restored with translation/timezone.override
ORIGIN_KEYS = ("sender", "request_id")  # which page and which Turbo request
REQUEST_KEYS = LOCALE_KEYS + ORIGIN_KEYS
_LANGUAGE = re.compile(r"[A-Za-z]{1,8}(?:[-_@][A-Za-z0-9]{1,8})*")
_TIME_ZONE = re.compile(r"[A-Za-z][A-Za-z0-9_+-]*(?:/[A-Za-z0-9_+-]+){0,2}")


class _AnyJob(TypedDict, total=False):
    request: dict[str, str]  # REQUEST_KEYS


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


class _RawJobRequired(_AnyJob):
    action: Literal["raw"]
    stream: StreamRef
    html: str  # <turbo-stream> markup rendered by the caller, sent as it is


class RawJob(_RawJobRequired, total=False):
    exclude_sender: bool


Job = SaveJob | DeleteJob | BroadcastJob | RecheckJob | RawJob


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


def recheck_job(ref: StreamRef) -> RecheckJob:
    return {"action": "recheck", "stream": ref}


def raw_job(ref: StreamRef, html: str, exclude_sender: bool = False) -> RawJob:
    job: RawJob = {"action": "raw", "stream": ref, "html": html}
    if exclude_sender:
        job["exclude_sender"] = True
    return job


def trailing_refresh_job(ref: StreamRef, token: str, exclude_sender: bool) -> BroadcastJob:
    """The delayed refresh that closes the debounce window ``token`` opened
    (turbo_tasks.refreshes)."""
    job: BroadcastJob = {
        "action": "broadcast",
        "stream": ref,
        "turbo_action": "refresh",
        "trailing": token,
    }
    if exclude_sender:
        job["exclude_sender"] = True
    return job


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
    if not isinstance(job, dict):
        raise InvalidJob(f"{where}: must be an object, not {type(job).__name__}")
    if "request" in job and (why := _request_problem(job["request"])) is not None:
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
    elif action in ("broadcast", "recheck", "raw"):
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
        elif action == "raw":
            if not isinstance(job.get("html"), str):
                raise InvalidJob(f"{where}: 'html' must be a string")
            if not isinstance(job.get("exclude_sender", False), bool):
                raise InvalidJob(f"{where}: 'exclude_sender' must be true or false")
    else:
        raise InvalidJob(f"{where}: 'action' must be save, delete, broadcast, recheck or raw")


def _check_broadcast(job: dict[str, Any], where: str) -> None:
    action = job.get("turbo_action", "")
    try:
        markup.check_action(action)
    except ValueError as exc:
        raise InvalidJob(f"{where}: 'turbo_action': {exc}") from None
    for key in ("target", "targets", "template", "text", "trailing"):
        if key in job and not isinstance(job[key], str):
            raise InvalidJob(f"{where}: {key!r} must be a string")
    for key in ("exclude_sender", "debounce"):
        if not isinstance(job.get(key, False), bool):
            raise InvalidJob(f"{where}: {key!r} must be true or false")
    if not isinstance(job.get("context", {}), dict):
        raise InvalidJob(f"{where}: 'context' must be an object")
    if action != "refresh" and ("debounce" in job or "trailing" in job):
        raise InvalidJob(f"{where}: only a refresh can be debounced")
    try:
        markup.check_frame(action, job.get("target"), job.get("targets"), job.get("method"))
        markup.check_content(action, "template" in job, "text" in job)
    except ValueError as exc:
        raise InvalidJob(f"{where}: {exc}") from None


def _request_problem(request: Any) -> str | None:
    """What is wrong with a job's ``request`` object (None when it is usable)."""
    if not isinstance(request, dict):
        return "must be an object"
    for key, value in request.items():
        if key not in REQUEST_KEYS:
            return f"unknown key {key!r} (known: {', '.join(REQUEST_KEYS)})"
        if not isinstance(value, str):
            return f"{key!r} must be a string"
    language = request.get("language")
    if language is not None and not (len(language) <= 32 and _LANGUAGE.fullmatch(language)):
        return f"'language' {language[:40]!r} is not a language code"
    name = request.get("time_zone")
    if name is not None:
        try:
            known = len(name) <= 64 and _TIME_ZONE.fullmatch(name) and zoneinfo.ZoneInfo(name)
        except Exception:  # ZoneInfoNotFoundError, ValueError, RecursionError on odd paths
            known = False
        if not known:
            return f"'time_zone' {name[:70]!r} is not a known time zone"
    for key in ORIGIN_KEYS:
        if key in request and token(request[key]) is None:
            return f"{key!r} {request[key]!r} is not a valid id"
    return None


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
