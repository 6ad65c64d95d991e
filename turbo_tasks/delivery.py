"""The fan-out: turn jobs into ``<turbo-stream>`` frames and push them to Channels groups.

Runs in the Celery worker (``turbo_tasks.deliver``) and, in-process, in
``turbo_tasks.testing``. It is the only place that renders stream templates.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from django.apps import apps
from django.core.exceptions import ValidationError
from django.db import DEFAULT_DB_ALIAS, models
from django.db.models.base import DEFERRED

from turbo_tasks import layers, rendering
from turbo_tasks.streams import (
    Broadcast,
    ModelStream,
    collector,
    decode_context,
    registry,
    stream_from_ref,
)

logger = logging.getLogger(__name__)

Job = dict[str, Any]


# Far above what a publisher sends (MAX_JOBS_PER_MESSAGE); a bound for hand-edited args.
MAX_JOBS_PER_TASK = 100_000


class InvalidJob(ValueError):
    """A job payload that can never succeed (e.g. edited by hand); not worth retrying."""


class HookError(Exception):
    """One or more hooks raised; the other jobs' frames were still delivered."""


@dataclass
class Delivery:
    broadcasts: list[Broadcast] = field(default_factory=list)
    errors: list[tuple[Job, BaseException]] = field(default_factory=list)


@dataclass
class _RowStep:
    model: type[models.Model]
    stream_class: type[ModelStream]
    pk: Any
    created: bool | None = None  # None: no save since the last delete
    deleted: Job | None = None


# -- validation ------------------------------------------------------------------------


def _model_stream(job: Job, index: int) -> tuple[type[models.Model], type[ModelStream]]:
    label = job.get("model")
    if not isinstance(label, str):
        raise InvalidJob(f"job {index}: 'model' must be an app_label.model_name string")
    try:
        model = apps.get_model(label)
    except (LookupError, ValueError):
        raise InvalidJob(f"job {index}: unknown model {label!r}") from None
    stream_class = registry.for_model(model)
    if stream_class is None:
        raise InvalidJob(f"job {index}: model {label!r} has no ModelStream")
    return model, stream_class


def _check(job: Any, index: int) -> None:
    if not isinstance(job, dict):
        raise InvalidJob(f"job {index}: must be an object, not {type(job).__name__}")
    action = job.get("action")
    if action in ("save", "delete"):
        if type(job.get("pk")) not in (int, str):
            raise InvalidJob(f"job {index}: 'pk' must be an integer or a string")
        if action == "save" and not isinstance(job.get("created"), bool):
            raise InvalidJob(f"job {index}: 'created' must be true or false")
        if action == "delete" and not isinstance(job.get("fields"), dict):
            raise InvalidJob(f"job {index}: 'fields' must be an object")
    elif action == "broadcast":
        ref = job.get("stream")
        if not (
            isinstance(ref, dict)
            and isinstance(ref.get("stream"), str)
            and isinstance(ref.get("args"), list)
            and isinstance(ref.get("kwargs"), dict)
        ):
            raise InvalidJob(f"job {index}: 'stream' must be {{stream, args, kwargs}}")
        try:
            rendering.check_action(job.get("turbo_action", ""))
        except ValueError as exc:
            raise InvalidJob(f"job {index}: 'turbo_action': {exc}") from None
        targets = [job.get(k) for k in ("target", "targets") if k in job]
        if len(targets) != 1 or not isinstance(targets[0], str):
            raise InvalidJob(f"job {index}: needs one string 'target' or 'targets'")
        for key in ("template", "text"):
            if key in job and not isinstance(job[key], str):
                raise InvalidJob(f"job {index}: {key!r} must be a string")
        if not isinstance(job.get("context", {}), dict):
            raise InvalidJob(f"job {index}: 'context' must be an object")
    else:
        raise InvalidJob(f"job {index}: 'action' must be save, delete or broadcast")


# -- planning -----------------------------------------------------------------------------


def _plan(jobs: list[Any]) -> list[_RowStep | Job]:
    """Coalesce row jobs in order of first appearance.

    Saves of one row merge into one save, created if any of them created it; a delete
    supersedes the saves before it (a save after it, of a re-created row, still runs).
    """
    if not isinstance(jobs, list):
        raise InvalidJob(f"jobs must be a list, not {type(jobs).__name__}")
    if len(jobs) > MAX_JOBS_PER_TASK:
        raise InvalidJob(f"{len(jobs)} jobs in one task; at most {MAX_JOBS_PER_TASK}")
    steps: list[_RowStep | Job] = []
    rows: dict[tuple[str, Any], _RowStep] = {}
    for index, job in enumerate(jobs):
        _check(job, index)
        if job["action"] == "broadcast":
            steps.append(job)
            continue
        model, stream_class = _model_stream(job, index)
        try:
            pk = model._meta.pk.to_python(job["pk"])
        except ValidationError:
            raise InvalidJob(f"job {index}: 'pk' {job['pk']!r} is not a valid pk") from None
        step = rows.get((model._meta.label_lower, pk))
        if step is None:
            step = rows[(model._meta.label_lower, pk)] = _RowStep(model, stream_class, pk)
            steps.append(step)
        if job["action"] == "delete":
            step.deleted, step.created = job, None
        else:
            step.created = job["created"] or bool(step.created)
    return steps


def _reload(steps: list[_RowStep | Job], using: str) -> dict[tuple[type, Any], models.Model]:
    wanted: dict[type[models.Model], list[Any]] = {}
    for step in steps:
        if isinstance(step, _RowStep) and step.created is not None:
            wanted.setdefault(step.model, []).append(step.pk)
    rows = {}
    for model, pks in wanted.items():
        # Hooks usually follow foreign keys (message.room.stream): join them in, rather
        # than one query per row.
        queryset = model._base_manager.using(using).select_related(*_foreign_keys(model))
        for pk, row in queryset.in_bulk(pks).items():
            rows[(model, pk)] = row
    return rows


def _foreign_keys(model: type[models.Model]) -> list[str]:
    return [f.name for f in model._meta.concrete_fields if f.many_to_one]


def _rebuild(model: type[models.Model], fields: dict[str, Any], using: str) -> models.Model:
    """The deleted row as it was, from the snapshot taken at delete time."""
    names, values = [], []
    for f in model._meta.concrete_fields:
        names.append(f.attname)
        values.append(f.to_python(fields[f.attname]) if f.attname in fields else DEFERRED)
    return model.from_db(using, names, values)


# -- running ------------------------------------------------------------------------------


def render(jobs: list[Any], using: str = DEFAULT_DB_ALIAS) -> Delivery:
    """Run the hooks for ``jobs`` and collect every frame they send (rendered when first
    read, see materialize). Touches no channel layer. Raises InvalidJob for a malformed
    payload before running any hook."""
    steps = _plan(jobs)
    rows = _reload(steps, using)
    result = Delivery()
    token = collector.set(result.broadcasts)
    try:
        for step in steps:
            try:
                _run(step, rows, using, result.broadcasts)
            except Exception as exc:
                job = (
                    step
                    if isinstance(step, dict)
                    else {"model": step.model._meta.label_lower, "pk": step.pk}
                )
                logger.exception("turbo_tasks: a broadcast hook failed for %s", job)
                result.errors.append((job, exc))
    finally:
        collector.reset(token)
    return result


def _run(
    step: _RowStep | Job,
    rows: dict[tuple[type, Any], models.Model],
    using: str,
    out: list[Broadcast],
) -> None:
    if isinstance(step, dict):
        out.append(
            Broadcast(
                stream_from_ref(step["stream"]),
                step["turbo_action"],
                step.get("target"),
                step.get("targets"),
                template=step.get("template"),
                context=decode_context(step.get("context", {}), using),
                text=step.get("text"),
            )
        )
        return
    if step.deleted is not None:
        instance = _rebuild(step.model, step.deleted["fields"], using)
        step.stream_class(instance).on_delete(instance)
    if step.created is not None:
        row = rows.get((step.model, step.pk))
        if row is None:
            logger.debug(
                "turbo_tasks: %s pk=%r is gone; skipping its on_save",
                step.model._meta.label,
                step.pk,
            )
            return
        step.stream_class(row).on_save(row, created=step.created)


def materialize(
    broadcasts: list[Broadcast],
    errors: list[tuple[Job, BaseException]],
    groups: set[str] | None = None,
) -> list[tuple[str, str]]:
    """Render the frames (only those for ``groups``, when given) as ``(group, html)``;
    a template that fails is logged and recorded in ``errors``, the others still go."""
    frames = []
    for broadcast in broadcasts:
        if groups is not None and broadcast.group not in groups:
            continue
        try:
            frames.append((broadcast.group, broadcast.html))
        except Exception as exc:
            logger.exception("turbo_tasks: rendering %r failed", broadcast)
            errors.append(({"broadcast": repr(broadcast)}, exc))
    return frames


def deliver(jobs: list[Any], using: str = DEFAULT_DB_ALIAS) -> int:
    """Run the hooks for ``jobs``, render the frames of streams that have subscribers and
    push them; return the number of frames sent. Frames from hooks that succeeded are
    pushed even when another hook failed; then HookError is raised."""
    result = render(jobs, using)
    layer = layers.get_layer()
    subscribed = layers.groups_with_subscribers(layer, {b.group for b in result.broadcasts})
    frames = materialize(result.broadcasts, result.errors, subscribed)
    layers.push(layer, frames)
    if result.errors:
        raise HookError(
            f"{len(result.errors)} of {len(jobs)} broadcast job(s) failed in their hooks: "
            + "; ".join(f"{job}: {exc!r}" for job, exc in result.errors[:5])
        )
    return len(frames)
