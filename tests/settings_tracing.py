"""tests.settings for a worker that exports its OpenTelemetry spans (tests/test_tracing.py).

The worker sets the global TracerProvider as a project would, at start-up; each finished
span is appended as one JSON line to the file named by ``TURBO_TEST_TRACE_FILE``, for the
test process to read.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from tests.settings import *  # noqa: F403


def span_record(span: ReadableSpan) -> dict[str, object]:
    """What the test looks at of a finished span, with ids in W3C hex."""
    context = span.get_span_context()
    assert context is not None
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": trace.format_trace_id(context.trace_id),
        "span_id": trace.format_span_id(context.span_id),
        "parent_span_id": trace.format_span_id(span.parent.span_id) if span.parent else None,
        "parent_remote": span.parent.is_remote if span.parent else None,
        "links": [
            {
                "trace_id": trace.format_trace_id(link.context.trace_id),
                "span_id": trace.format_span_id(link.context.span_id),
            }
            for link in span.links
        ],
        "attributes": dict(span.attributes or {}),
        "status": span.status.status_code.name,
    }


class JsonLinesExporter(SpanExporter):
    """Appends each finished span to ``path``, one JSON object a line, flushed at once."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(span_record(span)) + "\n" for span in spans)
        with self.lock, open(self.path, "a", encoding="utf-8") as file:
            file.write(lines)
        return SpanExportResult.SUCCESS


_provider = TracerProvider()
_provider.add_span_processor(
    SimpleSpanProcessor(JsonLinesExporter(os.environ["TURBO_TEST_TRACE_FILE"]))
)
trace.set_tracer_provider(_provider)

# tests/test_tracing.py's worker with opentelemetry-instrumentation-celery, as a project
# instruments Celery when the worker starts.
if os.environ.get("TURBO_TEST_CELERY_INSTRUMENTATION"):
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    CeleryInstrumentor().instrument()
