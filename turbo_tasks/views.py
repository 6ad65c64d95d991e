"""The metrics view: this web process's Prometheus metrics (turbo_tasks.metrics), for the
scraper. Mount it in your URLconf::

    from turbo_tasks.views import metrics

    urlpatterns = [..., path("turbo-tasks/metrics", metrics)]

It answers ``GET`` with Prometheus' text format (``prometheus_client``'s
``CONTENT_TYPE_LATEST``): the counters of the web and ASGI processes writing to the same
``PROMETHEUS_MULTIPROC_DIR`` (or of this one alone), and, read at scrape time, the
broadcast queue's depth and the outbox backlog. With ``TURBO_TASKS["METRICS_TOKEN"]`` set
it requires ``Authorization: Bearer <token>`` and answers 401 otherwise; without one it
answers whoever reaches the URL, so mount it where only the scraper can. 404 when metrics
are off (prometheus_client missing, or ``TURBO_TASKS["METRICS"]`` False).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Any

from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.http import require_GET

from turbo_tasks import backlog, conf
from turbo_tasks import metrics as measured


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Serve the metrics (see the module's docstring)."""
    if not measured.available():
        raise Http404("turbo_tasks metrics are off")
    token = conf.get("METRICS_TOKEN")
    if token:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            response = HttpResponse("Unauthorized\n", status=401, content_type="text/plain")
            response["WWW-Authenticate"] = 'Bearer realm="turbo_tasks metrics"'
            return response
    import prometheus_client

    registry = measured.registry()
    body = prometheus_client.generate_latest(registry) + prometheus_client.generate_latest(
        _Waiting()
    )
    return HttpResponse(body, content_type=prometheus_client.CONTENT_TYPE_LATEST)


class _Waiting:
    """Gauges read when scraped: the broadcast queue's depth (and, on a Redis broker, its
    unacknowledged messages and the age of the oldest), and the outbox backlog."""

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        queue = backlog.broker_queue(conf.get("QUEUE"))
        for key, name, doc in (
            ("waiting", "queue_waiting", "deliver messages waiting in the broadcast queue."),
            ("unacked", "queue_unacked", "deliver messages a worker took, not yet acknowledged."),
            ("oldest_unacked_seconds", "queue_oldest_unacked_seconds",
             "Age of the oldest unacknowledged deliver message."),
        ):  # fmt: skip
            if queue.get(key) is not None:
                family = GaugeMetricFamily(f"turbo_tasks_{name}", doc, labels=["queue"])
                family.add_metric([queue["name"]], float(queue[key]))
                yield family
        waiting = backlog.outbox_backlog()
        if waiting is None or "databases" not in waiting:
            return
        rows = GaugeMetricFamily(
            "turbo_tasks_outbox_rows", "Outbox rows no worker has confirmed.", labels=["database"]
        )
        oldest = GaugeMetricFamily(
            "turbo_tasks_outbox_oldest_seconds",
            "Age of the oldest outbox row.",
            labels=["database"],
        )
        for database in waiting["databases"]:
            rows.add_metric([database["database"]], float(database["rows"]))
            if database["oldest_seconds"] is not None:
                oldest.add_metric([database["database"]], float(database["oldest_seconds"]))
        yield rows
        yield oldest
