"""The write path's receivers: ``post_save`` and ``post_delete`` record which row changed.

A receiver builds one small JSON job (turbo_tasks.jobs) and hands it to the transaction's
batch (turbo_tasks.batching), which publishes it after commit. Receivers are connected only
for models whose ModelStream does something on that write (``ModelStream.overrides``); which
models those are, and what their delete snapshots hold, is the registry's to say.
"""

from __future__ import annotations

import warnings
from typing import Any

from django.db import DEFAULT_DB_ALIAS, models
from django.db.models.signals import post_delete, post_save

from turbo_tasks.batching import enqueue
from turbo_tasks.jobs import delete_job, save_job
from turbo_tasks.registry import registry
from turbo_tasks.suppression import suppressed


def connect_receivers() -> None:
    """Connect receivers for the registered models whose stream overrides a hook."""
    wanted = (
        (post_save, _on_post_save, "save", registry.saving_models()),
        (post_delete, _on_post_delete, "delete", registry.deleting_models()),
    )
    for signal, receiver, kind, models_ in wanted:
        for model in models_:
            uid = f"turbo_tasks.{kind}.{model._meta.label_lower}"
            signal.connect(receiver, sender=model, weak=False, dispatch_uid=uid)


def _on_post_save(
    sender: type[models.Model],
    instance: models.Model,
    created: bool,
    raw: bool = False,
    using: str = DEFAULT_DB_ALIAS,
    **kwargs: Any,
) -> None:
    if raw:  # loaddata: fixtures are not user-visible changes
        return
    enqueue(save_job(instance, created, kwargs.get("update_fields")), using)


def _on_post_delete(
    sender: type[models.Model],
    instance: models.Model,
    using: str = DEFAULT_DB_ALIAS,
    **kwargs: Any,
) -> None:
    if suppressed():  # enqueue would drop the job too; skip taking the snapshot
        return
    attnames = registry.snapshot_attnames(sender)
    if attnames is not None:
        enqueue(delete_job(instance, attnames), using)


def __getattr__(name: str) -> Any:
    # turbo.suppress() lived here until 2026-12; keep the old import path working.
    if name == "suppress":
        warnings.warn(
            "turbo_tasks.signals.suppress moved: use turbo_tasks.suppress() "
            "(import turbo_tasks as turbo; turbo.suppress()).",
            DeprecationWarning,
            stacklevel=2,
        )
        from turbo_tasks.suppression import suppress

        return suppress
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
