"""OpenTelemetry across the queue (turbo_tasks.tracing): the writer's ``traceparent``, the
worker's ``turbo_tasks.deliver`` span and its stages; nothing at all when OpenTelemetry is
missing or ``TRACING`` is off. Then the whole trip: a request span in this process, a real
Celery worker exporting its spans to a file (tests/settings_tracing.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import transaction
from django.test import override_settings
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags

from tests.helpers import ROOT, Process, celery_app, start_worker, test_env, wait_for
from tests.testapp.models import Message, Room
from turbo_tasks import conf, publish, tracing

# The W3C spec's own example.
TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
SPAN_ID = 0xB7AD6B7169203331
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class _Recorder(SpanProcessor):
    """Hands finished spans to the exporter of the test running now, if any: the global
    TracerProvider is set once per process and outlives this module's tests."""

    exporter: InMemorySpanExporter | None = None

    def on_end(self, span: ReadableSpan) -> None:
        if self.exporter is not None:
            self.exporter.export([span])


_recorder = _Recorder()


@pytest.fixture(scope="session")
def provider() -> TracerProvider:
    """The process's global SDK TracerProvider, as a project configures it."""
    current = trace.get_tracer_provider()
    if not isinstance(current, TracerProvider):
        current = TracerProvider()
        trace.set_tracer_provider(current)
    current.add_span_processor(_recorder)
    return current


@pytest.fixture
def spans(provider: TracerProvider) -> Iterator[InMemorySpanExporter]:
    """The spans this test finishes, in memory."""
    exporter = InMemorySpanExporter()
    _recorder.exporter = exporter
    yield exporter
    _recorder.exporter = None


@pytest.fixture
def tracer(provider: TracerProvider) -> trace.Tracer:
    return provider.get_tracer("tests")


def finished(spans: InMemorySpanExporter, trace_id: int) -> dict[str, ReadableSpan]:
    """The finished spans of one trace, by name (another thread, e.g. pytest-celery's
    in-process worker, may finish spans of its own meanwhile)."""
    found = {}
    for span in spans.get_finished_spans():
        assert span.context is not None
        if span.context.trace_id == trace_id:
            found[span.name] = span
    return found


def w3c(context: SpanContext) -> str:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


# --- traceparent() -------------------------------------------------------------------------


def test_traceparent_without_an_active_span_is_none(provider):
    assert tracing.traceparent() is None


def test_traceparent_is_the_active_spans_context_in_w3c_format(tracer):
    with tracer.start_as_current_span("request") as request:
        header = tracing.traceparent()
    context = request.get_span_context()
    assert header == w3c(context)
    assert int(header.rsplit("-", 1)[1], 16) & 1  # the sampled flag


def test_traceparent_of_an_unsampled_span_says_so():
    context = SpanContext(TRACE_ID, SPAN_ID, is_remote=False, trace_flags=TraceFlags(0))
    with trace.use_span(NonRecordingSpan(context)):
        assert tracing.traceparent() == TRACEPARENT[:-2] + "00"


def test_traceparent_with_tracing_off_is_none(tracer):
    with (
        override_settings(TURBO_TASKS={"TRACING": False}),
        tracer.start_as_current_span("request"),
    ):
        assert tracing.traceparent() is None


# --- delivery_span() and stage() -----------------------------------------------------------


def test_delivery_span_continues_the_remote_trace_and_links_to_it(spans):
    with tracing.delivery_span(TRACEPARENT, 3):
        for name in ("hooks", "render", "push"):
            with tracing.stage(name):
                pass

    found = finished(spans, TRACE_ID)
    assert set(found) == {
        "turbo_tasks.deliver",
        "turbo_tasks.hooks",
        "turbo_tasks.render",
        "turbo_tasks.push",
    }
    deliver = found["turbo_tasks.deliver"]
    assert deliver.parent is not None
    assert (deliver.parent.trace_id, deliver.parent.span_id) == (TRACE_ID, SPAN_ID)
    assert deliver.parent.is_remote
    assert [(link.context.trace_id, link.context.span_id) for link in deliver.links] == [
        (TRACE_ID, SPAN_ID)
    ]
    assert deliver.kind is SpanKind.CONSUMER
    assert dict(deliver.attributes or {}) == {
        "turbo_tasks.jobs": 3,
        "messaging.system": "celery",
        "messaging.operation.type": "process",
    }
    assert deliver.instrumentation_scope is not None
    assert deliver.instrumentation_scope.name == "turbo_tasks"
    assert deliver.status.status_code is StatusCode.UNSET


def test_stage_spans_are_children_of_the_delivery_span(spans):
    with tracing.delivery_span(TRACEPARENT, 1), tracing.stage("hooks"):
        pass

    found = finished(spans, TRACE_ID)
    hooks, deliver = found["turbo_tasks.hooks"], found["turbo_tasks.deliver"]
    assert deliver.context is not None
    assert hooks.parent is not None
    assert hooks.parent.span_id == deliver.context.span_id
    assert hooks.kind is SpanKind.INTERNAL


@pytest.mark.parametrize(
    "header", [None, "", "not-a-traceparent", "00-" + "0" * 32 + "-" + "0" * 16 + "-01"]
)
def test_delivery_span_without_a_valid_traceparent_starts_a_trace(spans, header):
    with tracing.delivery_span(header, 1):
        context = trace.get_current_span().get_span_context()
    deliver = finished(spans, context.trace_id)["turbo_tasks.deliver"]
    assert deliver.parent is None
    assert list(deliver.links) == []


def test_delivery_span_nests_under_a_span_the_worker_already_runs(spans, tracer):
    # As under opentelemetry-instrumentation-celery: its run/<task> span is current, in
    # the writer's trace through its own headers.
    remote = trace.set_span_in_context(
        NonRecordingSpan(SpanContext(TRACE_ID, SPAN_ID, is_remote=True, trace_flags=TraceFlags(1)))
    )
    with (
        tracer.start_as_current_span("run/turbo_tasks.deliver", context=remote) as run,
        tracing.delivery_span(TRACEPARENT, 1),
    ):
        pass
    deliver = finished(spans, TRACE_ID)["turbo_tasks.deliver"]
    assert deliver.parent is not None
    assert deliver.parent.span_id == run.get_span_context().span_id
    assert [link.context.span_id for link in deliver.links] == [SPAN_ID]


def test_delivery_span_records_an_exception_and_lets_it_through(spans):
    with pytest.raises(ValueError, match="boom"), tracing.delivery_span(TRACEPARENT, 1):
        raise ValueError("boom")
    deliver = finished(spans, TRACE_ID)["turbo_tasks.deliver"]
    assert deliver.status.status_code is StatusCode.ERROR
    assert [event.name for event in deliver.events] == ["exception"]


def test_stage_without_an_active_span_records_nothing(spans):
    with tracing.stage("hooks"):
        assert not trace.get_current_span().get_span_context().is_valid
    assert spans.get_finished_spans() == ()


def test_tracing_off_records_nothing(spans, tracer):
    with (
        override_settings(TURBO_TASKS={"TRACING": False}),
        tracer.start_as_current_span("request") as request,
        tracing.delivery_span(TRACEPARENT, 1),
        tracing.stage("hooks"),
    ):
        assert trace.get_current_span() is request
    assert [span.name for span in spans.get_finished_spans()] == ["request"]


def test_without_opentelemetry_nothing_happens_and_settings_are_not_read(
    spans, tracer, monkeypatch
):
    monkeypatch.setattr(tracing, "_AVAILABLE", False)

    def no_settings(name: str) -> Any:
        raise AssertionError(f"read TURBO_TASKS[{name!r}]")

    monkeypatch.setattr(conf, "get", no_settings)
    with tracer.start_as_current_span("request") as request:
        assert tracing.traceparent() is None
        with tracing.delivery_span(TRACEPARENT, 1), tracing.stage("hooks"):
            assert trace.get_current_span() is request
    assert [span.name for span in spans.get_finished_spans()] == ["request"]


def test_the_module_imports_and_does_nothing_when_opentelemetry_is_missing():
    script = (
        "import sys; sys.modules['opentelemetry'] = None\n"  # makes any import of it fail
        "from turbo_tasks import tracing\n"
        "assert tracing._AVAILABLE is False\n"
        "assert tracing.traceparent() is None\n"
        f"with tracing.delivery_span({TRACEPARENT!r}, 1), tracing.stage('hooks'):\n"
        "    pass\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=test_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "ok\n", "")


# --- the whole trip: a request here, a real worker there -----------------------------------

DELIVERY = {"turbo_tasks.deliver", "turbo_tasks.hooks", "turbo_tasks.render", "turbo_tasks.push"}


class TracedWorker:
    def __init__(self, process: Process, queue: str, trace_file: Path) -> None:
        self.process, self.queue, self.trace_file = process, queue, trace_file

    def spans(self) -> list[dict[str, Any]]:
        """The spans the worker has exported so far (complete lines only)."""
        if not self.trace_file.exists():
            return []
        text = self.trace_file.read_text(encoding="utf-8")
        return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]

    def wait_for_trace(self, trace_id: str, names: set[str]) -> dict[str, dict[str, Any]]:
        """The worker's spans of ``trace_id`` by name, once ``names`` are all there."""

        def exported() -> dict[str, dict[str, Any]] | None:
            found = {s["name"]: s for s in self.spans() if s["trace_id"] == trace_id}
            return found if names <= set(found) else None

        found: dict[str, dict[str, Any]] = wait_for(
            exported, 30, f"the worker's spans {sorted(names)} of trace {trace_id}"
        )
        return found


def start_traced_worker(
    name: str, tmp_path_factory: pytest.TempPathFactory, **extra: str
) -> TracedWorker:
    """``celery -A worker worker`` on a queue of its own, with an SDK TracerProvider that
    appends its finished spans to a file (tests/settings_tracing.py)."""
    queue = f"{name}-{uuid.uuid4().hex[:8]}"
    trace_file = tmp_path_factory.mktemp("traces") / "worker-spans.jsonl"
    env = test_env()
    env["DJANGO_SETTINGS_MODULE"] = "tests.settings_tracing"
    env["TURBO_TEST_TRACE_FILE"] = str(trace_file)
    turbo_tasks = json.loads(env.get("TURBO_TEST_TURBO_TASKS", "{}"))
    env["TURBO_TEST_TURBO_TASKS"] = json.dumps({**turbo_tasks, "QUEUE": queue})
    env.update(extra)
    worker = start_worker(f"{name}-{os.getpid()}", queue=queue, env=env)
    return TracedWorker(worker, queue, trace_file)


@pytest.fixture(scope="module")
def traced_worker(
    redis_server: str, django_db_setup: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TracedWorker]:
    worker = start_traced_worker("traced", tmp_path_factory)
    yield worker
    worker.process.stop()


def broadcast_in_a_request(
    worker: TracedWorker, ws_client: Any, tracer: trace.Tracer, **turbo_tasks: Any
) -> SpanContext:
    """Save a message in a transaction inside a ``request`` span, with a page subscribed
    to its room; return the request span's context once the page has the frame."""
    with override_settings(TURBO_TASKS={"QUEUE": worker.queue, **turbo_tasks}):
        room = Room.objects.create(name="lobby")
        client = ws_client()
        assert client.subscribe(room.stream.signed_name)["type"] == "subscribed"
        with (
            tracer.start_as_current_span("request", kind=SpanKind.SERVER) as request,
            transaction.atomic(),
        ):
            message = Message.objects.create(room=room, text="traced")
        assert f'id="message-{message.id}"' in client.messages(timeout=60)
    return request.get_span_context()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("fast_publish", [True, False], ids=["fast-publish", "send-task"])
def test_worker_delivery_span_is_in_the_trace_of_the_request(
    traced_worker, ws_client, spans, tracer, fast_publish
):
    context = broadcast_in_a_request(traced_worker, ws_client, tracer, FAST_PUBLISH=fast_publish)
    trace_id, span_id = f"{context.trace_id:032x}", f"{context.span_id:016x}"
    # This process's side of the trace, exported in memory.
    assert list(finished(spans, context.trace_id)) == ["request"]

    found = traced_worker.wait_for_trace(trace_id, DELIVERY)
    deliver = found["turbo_tasks.deliver"]
    assert deliver["parent_span_id"] == span_id
    assert deliver["parent_remote"] is True
    assert deliver["links"] == [{"trace_id": trace_id, "span_id": span_id}]
    assert deliver["kind"] == "CONSUMER"
    assert deliver["attributes"]["turbo_tasks.jobs"] == 1
    assert deliver["status"] == "UNSET"
    for stage in ("hooks", "render", "push"):
        assert found[f"turbo_tasks.{stage}"]["parent_span_id"] == deliver["span_id"]


# opentelemetry-instrumentation-celery, where installed: its publish signals send turbo_tasks
# through send_task, its traceparent replaces ours, and its spans frame the delivery.


@pytest.fixture(scope="module")
def celery_instrumentor() -> Any:
    celery_instrumentation = pytest.importorskip("opentelemetry.instrumentation.celery")
    return celery_instrumentation.CeleryInstrumentor()


@pytest.fixture(scope="module")
def instrumented_worker(
    celery_instrumentor: Any,
    redis_server: str,
    django_db_setup: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TracedWorker]:
    worker = start_traced_worker(
        "instrumented", tmp_path_factory, TURBO_TEST_CELERY_INSTRUMENTATION="1"
    )
    yield worker
    worker.process.stop()


@pytest.mark.django_db(transaction=True)
def test_with_celerys_instrumentation_the_delivery_runs_in_its_task_span(
    celery_instrumentor, instrumented_worker, ws_client, spans, tracer
):
    celery_instrumentor.instrument()
    try:
        assert publish._fast_publisher(celery_app) is None  # it connected publish signals
        context = broadcast_in_a_request(instrumented_worker, ws_client, tracer)
    finally:
        celery_instrumentor.uninstrument()
    trace_id = f"{context.trace_id:032x}"
    here = finished(spans, context.trace_id)
    producer = here["apply_async/turbo_tasks.deliver"]
    assert producer.parent is not None
    assert producer.parent.span_id == context.span_id
    assert producer.context is not None
    producer_id = f"{producer.context.span_id:016x}"

    found = instrumented_worker.wait_for_trace(trace_id, {"run/turbo_tasks.deliver", *DELIVERY})
    run, deliver = found["run/turbo_tasks.deliver"], found["turbo_tasks.deliver"]
    assert run["parent_span_id"] == producer_id
    assert deliver["parent_span_id"] == run["span_id"]
    assert deliver["links"] == [{"trace_id": trace_id, "span_id": producer_id}]
    for stage in ("hooks", "render", "push"):
        assert found[f"turbo_tasks.{stage}"]["parent_span_id"] == deliver["span_id"]
