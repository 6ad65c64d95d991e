"""Broadcasting writes that send no signal: ``turbo.saved()`` and ``turbo.deleted()``.

Django sends no ``post_save`` for ``bulk_create()``, ``bulk_update()`` and
``QuerySet.update()``, and no ``post_delete`` for deletes the database does itself (raw SQL,
``on_delete=DB_CASCADE`` on Django 6.1). These functions record the jobs the receivers
would have recorded, in the same per-transaction batch, so they are published in the same
message after commit and never for a rolled-back transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import models, router

from turbo_tasks import _compat
from turbo_tasks.batching import enqueue_all
from turbo_tasks.jobs import Job, delete_job, save_job
from turbo_tasks.registry import registry
from turbo_tasks.suppression import suppressed

Rows = models.QuerySet[Any] | Iterable[models.Model]


def saved(objs: Rows, created: bool = False) -> None:
    """Broadcast a save of each row, as ``post_save`` would: ``on_save(row, created)`` runs
    in a worker after commit, on the row reloaded then::

        Message.objects.bulk_create(messages)
        turbo.saved(messages, created=True)

        Message.objects.filter(room=room).update(text="(hidden)")
        turbo.saved(Message.objects.filter(room=room))

    ``objs`` is a queryset (evaluated now, for its pks only, in one query on the database
    it writes to) or an iterable of saved instances (each must have a pk). Rows of a model
    whose stream does not override ``on_save`` are skipped, as their saves are. Nothing is
    recorded inside ``turbo.suppress()``.
    """
    if suppressed():
        return
    if isinstance(objs, models.QuerySet):
        if not registry.broadcasts_saves(objs.model):
            return
        using = _write_alias(objs)
        rows = _fresh(objs, using).only(objs.model._meta.pk.attname)
        enqueue_all([save_job(row, created) for row in rows], using)
        return
    by_alias: dict[str, list[Job]] = {}
    for obj in _instances(objs, "saved"):
        if registry.broadcasts_saves(type(obj)):
            by_alias.setdefault(_instance_alias(obj), []).append(save_job(obj, created))
    for using, jobs in by_alias.items():
        enqueue_all(jobs, using)


def deleted(objs: Rows) -> None:
    """Broadcast a delete of each row, as ``post_delete`` would. Call it *before* the rows
    are deleted: it takes each row's snapshot now (the stream's snapshot fields), and
    ``on_delete(row)`` runs in a worker after commit on the row rebuilt from it::

        rows = Message.objects.filter(room=room)
        turbo.deleted(rows)
        cursor.execute("DELETE FROM chat_message WHERE room_id = %s", [room.pk])

    ``objs`` is a queryset (evaluated once, now, on the database it writes to) or an
    iterable of instances that still have their pk. ``QuerySet.delete()`` needs none of
    this: Django sends ``post_delete`` for every row it deletes. Rows of a model whose
    stream does not override ``on_delete`` are skipped. Nothing is recorded inside
    ``turbo.suppress()``.
    """
    if suppressed():
        return
    if isinstance(objs, models.QuerySet):
        attnames = registry.snapshot_attnames(objs.model)
        if attnames is None:
            return
        using = _write_alias(objs)
        rows = _fresh(objs, using).only(*attnames)
        enqueue_all([delete_job(row, attnames) for row in rows], using)
        return
    by_alias: dict[str, list[Job]] = {}
    for obj in _instances(objs, "deleted"):
        attnames = registry.snapshot_attnames(type(obj))
        if attnames is not None:
            by_alias.setdefault(_instance_alias(obj), []).append(delete_job(obj, attnames))
    for using, jobs in by_alias.items():
        enqueue_all(jobs, using)


def _write_alias(queryset: models.QuerySet[Any]) -> str:
    # The alias update() and delete() write to; queryset.db is the *read* alias unless the
    # queryset is already marked for writing, and a read replica may not see this transaction.
    chosen, hints = _compat.queryset_routing(queryset)
    return chosen or router.db_for_write(queryset.model, **hints)


def _fresh(queryset: models.QuerySet[Any], using: str) -> models.QuerySet[Any]:
    # Joins and prefetches would only slow the one query down (and select_related clashes
    # with only()).
    return queryset.using(using).select_related(None).prefetch_related(None)


def _instances(objs: Any, name: str) -> list[models.Model]:
    if isinstance(objs, models.Model) or not isinstance(objs, Iterable):
        raise TypeError(
            f"turbo.{name}() takes a queryset or an iterable of model instances, not {objs!r}"
            + (f"; write turbo.{name}([obj])." if isinstance(objs, models.Model) else ".")
        )
    instances = list(objs)
    for obj in instances:
        if not isinstance(obj, models.Model):
            raise TypeError(f"turbo.{name}() takes model instances, not {obj!r}.")
        if obj.pk is None:
            why = (
                "bulk_create() sets pks only on PostgreSQL, MariaDB and SQLite 3.35+, and "
                "not with ignore_conflicts=True: pass a queryset of the rows instead"
                if name == "saved"
                else "call turbo.deleted() before the delete, while the rows have their pk"
            )
            raise ValueError(f"turbo.{name}(): {type(obj).__name__} {obj!r} has no pk; {why}.")
    return instances


def _instance_alias(obj: models.Model) -> str:
    # bulk_create() and querysets set _state.db; an instance built by hand (for bulk_update)
    # goes where Django would save it.
    return obj._state.db or router.db_for_write(type(obj), instance=obj)
