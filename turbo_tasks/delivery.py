"""The fan-out: turn jobs into ``<turbo-stream>`` frames and push them to Channels groups.

Runs in the Celery worker (``turbo_tasks.deliver``) and, in-process, in
``turbo_tasks.testing``: ``run_hooks`` validates and coalesces the jobs, reloads the rows
and runs the ModelStream hooks, collecting the frames they send; ``render_frames`` renders
those of streams with subscribers; ``deliver`` does both and pushes them. The only other
place that renders stream templates is a view's response (turbo_tasks.http).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from django.apps import apps
from django.core.exceptions import ValidationError
from django.db import DEFAULT_DB_ALIAS, models

from turbo_tasks import (
    codec,
    layers,
    metrics,
    refreshes,
    request_context,
    signing,
    snapshots,
    tracing,
)
from turbo_tasks import jobs as job_format
from turbo_tasks.exceptions import TRANSIENT_ERRORS, HookError, InvalidJob
from turbo_tasks.jobs import BroadcastJob, RawJob, RecheckJob
from turbo_tasks.registry import registry, stream_from_ref
from turbo_tasks.rendering import Broadcast
from turbo_tasks.streams import ModelStream, collector

logger = logging.getLogger(__name__)


@dataclass
class Delivery:
    broadcasts: list[Broadcast] = field(default_factory=list)
    errors: list[tuple[Any, BaseException]] = field(default_factory=list)
    rechecks: list[str] = field(default_factory=list)  # groups whose subscribers to recheck


@dataclass
class _RowStep:
    model: type[models.Model]
    stream_class: type[ModelStream]
    pk: Any
    created: bool | None = None  # None: no save since the last delete
    update_fields: frozenset[str] | None = None  # None: a save that named no fields
    deleted: models.Model | None = None  # rebuilt from the delete's snapshot
    request: dict[str, str] | None = None  # of the row's last job


def _model_stream(label: str, where: str) -> tuple[type[models.Model], type[ModelStream]]:
    try:
        model = apps.get_model(label)
    except (LookupError, ValueError):
        raise InvalidJob(f"{where}: unknown model {label!r}") from None
    stream_class = registry.for_model(model)
    if stream_class is None:
        raise InvalidJob(f"{where}: model {label!r} has no ModelStream")
    return model, stream_class


# -- planning -----------------------------------------------------------------------------


Step = _RowStep | BroadcastJob | RecheckJob | RawJob


def _plan(jobs: Any, using: str) -> list[Step]:
    """Validate every job, then coalesce row jobs in order of first appearance.

    Saves of one row merge into one save, created if any of them created it, whose
    update_fields is the union of theirs (None if any save named none); a delete
    supersedes the saves before it (a save after it, of a re-created row, still runs).
    """
    steps: list[Step] = []
    rows: dict[tuple[str, Any], _RowStep] = {}
    for index, job in enumerate(job_format.validate(jobs)):
        where = f"job {index}"
        if job["action"] == "broadcast" or job["action"] == "recheck" or job["action"] == "raw":
            try:
                stream_from_ref(job["stream"])
            except (LookupError, TypeError, ValueError, ValidationError) as exc:
                raise InvalidJob(f"{where}: 'stream' {job['stream']!r}: {exc}") from None
            if job["action"] == "broadcast":
                codec.check_context(job.get("context", {}), where, using)
            steps.append(job)
            continue
        model, stream_class = _model_stream(job["model"], where)
        pk = snapshots.check_pk(model, job["pk"], f"{where}: 'pk'", using)
        step = rows.get((model._meta.label_lower, pk))
        if step is None:
            step = rows[(model._meta.label_lower, pk)] = _RowStep(model, stream_class, pk)
            step.request = job.get("request")
            steps.append(step)
        else:
            step.request = request_context.merged(step.request, job.get("request"))
        if job["action"] == "delete":
            step.created = None
            step.deleted = snapshots.rebuild(model, job["fields"], where, using)
        else:
            names = job.get("update_fields")
            fields = None if names is None else frozenset(names)
            if step.created is not None:  # merging with an earlier save of this row
                earlier = step.update_fields
                fields = None if fields is None or earlier is None else fields | earlier
            step.update_fields = fields
            step.created = job["created"] or bool(step.created)
    return steps


def _reload(steps: list[Step], using: str) -> dict[tuple[type, Any], models.Model]:
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


def _link_deleted(steps: list[Step], using: str) -> None:
    """Pre-set the forward foreign keys of rows rebuilt from delete snapshots, so that
    ``on_delete`` can follow them (``message.room.stream``) when the target is gone too.

    A cascade deletes the children before their parent (Django's Collector sends their
    post_delete first), all in one transaction and so in one task: a target deleted in this
    task is its own rebuilt row (no query). Other targets are loaded with one ``in_bulk``
    per model; one gone by now becomes an instance holding only its key, whose other fields
    are deferred: ``.pk``, ``.stream`` and the child's ``room_id`` work, never DoesNotExist.
    """
    deleted = [s.deleted for s in steps if isinstance(s, _RowStep) and s.deleted is not None]
    # (concrete model, attname, value) -> the rebuilt row, by its pk or any unique field
    # (a foreign key may point at a to_field).
    in_task: dict[tuple[type[models.Model] | None, str, Any], models.Model] = {}
    for row in deleted:
        loaded = row.__dict__
        for f in row._meta.concrete_fields:
            if f.unique and f.attname in loaded:
                with contextlib.suppress(TypeError):  # an unhashable (JSON) value
                    in_task.setdefault(
                        (row._meta.concrete_model, f.attname, loaded[f.attname]), row
                    )
    pending: list[tuple[models.Model, models.ForeignKey[Any, Any], type[models.Model], Any]] = []
    wanted: dict[tuple[type[models.Model], str], set[Any]] = {}
    for row in deleted:
        deferred = row.get_deferred_fields()
        for fk in row._meta.concrete_fields:
            if not isinstance(fk, models.ForeignKey) or fk.attname in deferred:
                continue
            key = getattr(row, fk.attname)
            if key is None or fk.is_cached(row):
                continue
            model = cast("type[models.Model]", fk.related_model)
            parent = in_task.get((model._meta.concrete_model, fk.target_field.attname, key))
            if parent is not None:
                fk.set_cached_value(row, parent)
                continue
            pending.append((row, fk, model, key))
            wanted.setdefault((model, fk.target_field.name), set()).add(key)
    found = {
        (model, name): model._base_manager.using(using).in_bulk(keys, field_name=name)
        for (model, name), keys in wanted.items()
    }
    for row, fk, model, key in pending:
        parent = found[(model, fk.target_field.name)].get(key)
        if parent is None:
            parent = model.from_db(using, [fk.target_field.attname], [key])
        fk.set_cached_value(row, parent)


# -- running ------------------------------------------------------------------------------


def run_hooks(jobs: Any, using: str = DEFAULT_DB_ALIAS) -> Delivery:
    """Run the hooks for ``jobs`` and collect every frame they send, unrendered (see
    render_frames). Touches no channel layer. Raises InvalidJob for a malformed
    payload before running any hook."""
    steps = _plan(jobs, using)
    rows = _reload(steps, using)
    _link_deleted(steps, using)
    result = Delivery()
    token = collector.set(result.broadcasts)
    try:
        for step in steps:
            try:
                _run_step(step, rows, using, result)
            except TRANSIENT_ERRORS:
                # E.g. a lazy foreign-key load while the database restarts: the whole task
                # is retried, as for a failed reload (a frame sent twice is harmless).
                raise
            except Exception as exc:
                job = (
                    job_format.redact([step])[0]
                    if isinstance(step, dict)
                    else {"model": step.model._meta.label_lower, "pk": step.pk}
                )
                logger.exception("turbo_tasks: a broadcast hook failed for %s", job)
                result.errors.append((job, exc))
    finally:
        collector.reset(token)
    return result


def _run_step(
    step: Step, rows: dict[tuple[type, Any], models.Model], using: str, out: Delivery
) -> None:
    if isinstance(step, dict):
        if step["action"] == "recheck":
            out.rechecks.append(signing.group_name(step["stream"]))
            return
        if step["action"] == "raw":
            out.broadcasts.append(
                Broadcast.rendered(
                    stream_from_ref(step["stream"]),
                    signing.group_name(step["stream"]),
                    step["html"],
                    request=step.get("request"),
                    exclude_sender=step.get("exclude_sender", False),
                )
            )
            return
        out.broadcasts.append(
            Broadcast(
                stream_from_ref(step["stream"]),
                signing.group_name(step["stream"]),
                step["turbo_action"],
                step.get("target"),
                step.get("targets"),
                template=step.get("template"),
                context=codec.decode_context(step.get("context", {}), using),
                text=step.get("text"),
                method=step.get("method"),
                request=step.get("request"),
                exclude_sender=step.get("exclude_sender", False),
                debounce=step.get("debounce", False),
                trailing=step.get("trailing"),
            )
        )
        return
    # The hooks run as the request that made the change did: its language, time zone and
    # sender; so do the actions they send (Broadcast captures it).
    with request_context.activated(step.request):
        _call_hooks(step, rows, using)


def _call_hooks(step: _RowStep, rows: dict[tuple[type, Any], models.Model], using: str) -> None:
    stream_class = step.stream_class
    if step.deleted is not None:
        extra = _signal_kwargs(stream_class.on_delete, using=using)
        stream_class(step.deleted).on_delete(step.deleted, **extra)
        if stream_class.broadcasts_refreshes and step.created is None:
            stream_class(step.deleted).refresh(debounce=True)
    if step.created is not None:
        row = rows.get((step.model, step.pk))
        if row is None:
            logger.debug(
                "turbo_tasks: %s pk=%r is gone; skipping its on_save",
                step.model._meta.label,
                step.pk,
            )
            return
        extra = _signal_kwargs(
            stream_class.on_save, update_fields=step.update_fields, raw=False, using=using
        )
        stream_class(row).on_save(row, created=step.created, **extra)
        if stream_class.broadcasts_refreshes:
            stream_class(row).refresh(debounce=True)


def _signal_kwargs(hook: Callable[..., Any], **values: Any) -> dict[str, Any]:
    """The signal's keyword arguments ``hook`` accepts (by name, or all with ``**kwargs``),
    as turbo-django passed them: hooks written as ``on_save(self, instance, created)`` keep
    working. ``raw`` is always False: loaddata's saves are not broadcast."""
    accepted = _accepted(hook)
    return values if accepted is None else {k: v for k, v in values.items() if k in accepted}


@functools.cache
def _accepted(hook: Callable[..., Any]) -> frozenset[str] | None:
    """The keyword names ``hook`` accepts; None when it takes ``**kwargs``."""
    parameters = inspect.signature(hook).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return frozenset(
        p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    )


def render_frames(
    broadcasts: list[Broadcast], errors: list[tuple[Any, BaseException]]
) -> list[layers.Frame]:
    """Render the frames as ``(group, html, socket id to skip)``; a template that fails is
    logged and recorded in ``errors``, the others still go."""
    frames = []
    for broadcast in broadcasts:
        try:
            frames.append((broadcast.group, broadcast.html, broadcast.exclude))
        except TRANSIENT_ERRORS:
            raise
        except Exception as exc:
            logger.exception("turbo_tasks: rendering %r failed", broadcast)
            errors.append(({"broadcast": repr(broadcast)}, exc))
    return frames


def deliver(jobs: Any, using: str = DEFAULT_DB_ALIAS) -> int:
    """Run the hooks for ``jobs``, render the frames of streams that have subscribers and
    push them; return the number of frames sent. Frames from hooks that succeeded are
    pushed even when another hook failed; then HookError is raised."""
    with request_context.batch():
        with tracing.stage("hooks"):
            result = run_hooks(jobs, using)
        layer = layers.get_layer()
        subscribed = layers.groups_with_subscribers(layer, {b.group for b in result.broadcasts})
        started = time.perf_counter()
        with tracing.stage("render"):
            wanted = refreshes.debounce(layer, result.broadcasts, subscribed)
            frames = render_frames(wanted, result.errors)
    metrics.rendered(
        len(frames),
        groups=(b.group for b in result.broadcasts),
        subscribed=subscribed,
        failures=len(result.errors),
        seconds=time.perf_counter() - started,
    )
    with tracing.stage("push"):
        layers.push(layer, frames)
        layers.recheck(layer, result.rechecks)
    metrics.pushed(len(frames))
    if result.errors:
        raise HookError(
            f"{len(result.errors)} of {len(jobs)} broadcast job(s) failed in their hooks: "
            + "; ".join(f"{job}: {exc!r}" for job, exc in result.errors[:5])
        )
    return len(frames)
