"""Django internals: ``transaction.on_commit`` bookkeeping and a queryset's write routing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# -- Django: transaction.on_commit bookkeeping ----------------------------------------------


def on_commit_callbacks(connection: Any) -> list[Callable[[], Any]]:
    """The callbacks pending on ``connection``, oldest first (Django keeps
    ``(savepoint_ids, callback, robust)`` tuples in ``connection.run_on_commit``)."""
    return [entry[1] for entry in connection.run_on_commit]


def last_on_commit_callback(connection: Any) -> Callable[[], Any] | None:
    pending = connection.run_on_commit
    return pending[-1][1] if pending else None


# -- Django: a queryset's write routing ------------------------------------------------------


def queryset_routing(queryset: Any) -> tuple[str | None, dict[str, Any]]:
    """The alias ``.using()`` set on ``queryset`` (None if none) and its routers' hints: what
    ``QuerySet.update()``/``delete()`` pass to ``router.db_for_write`` (``QuerySet._db`` and
    ``._hints``, which django-stubs does not declare)."""
    return getattr(queryset, "_db", None), dict(getattr(queryset, "_hints", {}))
