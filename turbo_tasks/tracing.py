"""OpenTelemetry trace context across the queue (optional).

When ``opentelemetry-api`` is installed and a span is active where a row is written, the
``turbo_tasks.deliver`` message carries the W3C ``traceparent`` of that span in its
headers, e.g. ``00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01``. The worker runs
the delivery in a ``turbo_tasks.deliver`` span that continues that trace (and links to
it), with ``turbo_tasks.hooks``, ``turbo_tasks.render`` and ``turbo_tasks.push`` as child
spans: a slow broadcast shows up in the trace of the request that caused it.

Without OpenTelemetry, or with ``TURBO_TASKS = {"TRACING": False}``, every function here
does nothing and costs next to nothing: the import is tried once, here.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from turbo_tasks import conf

try:
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:
    _AVAILABLE = False
else:
    _AVAILABLE = True
    # W3C trace context whatever propagator the project configured globally (B3, Jaeger,
    # a composite): the header's name and format are part of the message.
    _PROPAGATOR = TraceContextTextMapPropagator()

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

_NOTHING: AbstractContextManager[None] = contextlib.nullcontext()


def _enabled() -> bool:
    return _AVAILABLE and bool(conf.get("TRACING"))


def traceparent() -> str | None:
    """The W3C ``traceparent`` of the span active here, e.g.
    ``"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"`` (version, trace id,
    span id, flags: ``01`` sampled, ``00`` not). None when OpenTelemetry is not installed,
    ``TURBO_TASKS["TRACING"]`` is False, or no valid span is active.

    ``turbo_tasks.publish.send_jobs`` calls it once per committed transaction and sends
    the value as the ``traceparent`` header of its messages; ``tracestate`` and baggage are
    not sent."""
    if not _enabled():
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)  # writes nothing without a valid span context
    return carrier.get("traceparent")


def delivery_span(traceparent: str | None, jobs: int) -> AbstractContextManager[None]:
    """Run the worker's delivery of one ``turbo_tasks.deliver`` message in a span.

    The span is named ``turbo_tasks.deliver``, of kind ``CONSUMER``, with attributes
    ``turbo_tasks.jobs`` (``jobs``), ``messaging.system`` (``"celery"``) and
    ``messaging.operation.type`` (``"process"``). Its parent is the span that is already
    active in the worker if there is one (e.g. the ``run/turbo_tasks.deliver`` span of
    opentelemetry-instrumentation-celery, itself in the writer's trace), else the remote
    span ``traceparent`` names, so the delivery lands in the writer's trace; it carries a
    link to that remote span either way. A missing or malformed ``traceparent`` (a message
    re-run by hand) gives a span of its own, without link. An exception leaving the block
    is recorded on the span, whose status becomes ERROR, and propagates.

    Does nothing without OpenTelemetry or with ``TURBO_TASKS["TRACING"]`` False."""
    if not _enabled():
        return _NOTHING
    return _delivery_span(traceparent, jobs)


@contextlib.contextmanager
def _delivery_span(header: str | None, jobs: int) -> Iterator[None]:
    remote = _PROPAGATOR.extract({"traceparent": header} if isinstance(header, str) else {})
    remote_span = trace.get_current_span(remote).get_span_context()
    links = [trace.Link(remote_span)] if remote_span.is_valid else []
    active = trace.get_current_span().get_span_context().is_valid
    with _tracer().start_as_current_span(
        "turbo_tasks.deliver",
        # None: a child of the span active here. Otherwise the remote span, or a new trace
        # when the header named none (extract then returns an empty context).
        context=None if active else remote,
        kind=trace.SpanKind.CONSUMER,
        links=links,
        attributes={
            "turbo_tasks.jobs": jobs,
            "messaging.system": "celery",
            "messaging.operation.type": "process",
        },
    ):
        yield


def stage(name: str) -> AbstractContextManager[None]:
    """Run one stage of a delivery (``"hooks"``, ``"render"``, ``"push"``) in a child span
    ``turbo_tasks.<name>`` of the span active here. Does nothing when no span is active
    (a delivery run in-process by ``turbo_tasks.testing`` outside any trace), without
    OpenTelemetry, or with ``TURBO_TASKS["TRACING"]`` False."""
    if not _enabled() or not trace.get_current_span().get_span_context().is_valid:
        return _NOTHING
    return _stage(name)


@contextlib.contextmanager
def _stage(name: str) -> Iterator[None]:
    with _tracer().start_as_current_span(f"turbo_tasks.{name}"):
        yield


@functools.cache
def _tracer() -> Tracer:
    # Before the project sets its TracerProvider this is a proxy that follows it once set.
    return trace.get_tracer("turbo_tasks", _version())


def _version() -> str | None:
    try:
        return importlib.metadata.version("turbo-tasks")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return None
