"""Prometheus metrics: requests and latency per endpoint, events ingested, index size.

Endpoints are labelled by their URL rule (``/v1/items/<item_id>``), never the raw path, so the
label set stays bounded. Each app gets its own registry (tests build several apps per process).

Under gunicorn each worker counts its own requests, so a scrape sees one worker's numbers. Set
``PROMETHEUS_MULTIPROC_DIR`` to an empty, writable directory before the server starts to have
prometheus_client aggregate all workers (its multiprocess mode); the gunicorn config should then
call ``prometheus_client.multiprocess.mark_process_dead(worker.pid)`` in ``child_exit``.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "driftrec_http_requests",
            "HTTP requests answered, by method, endpoint (URL rule) and status code.",
            ["method", "endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "driftrec_http_request_duration_seconds",
            "Time to answer an HTTP request, by method and endpoint (URL rule).",
            ["method", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.events = Counter(
            "driftrec_events_ingested",
            "Events received through the API, by outcome (accepted, duplicate, rejected).",
            ["outcome"],
            registry=self.registry,
        )
        self.items_upserted = Counter(
            "driftrec_items_upserted",
            "Catalogue items upserted through the API.",
            registry=self.registry,
        )
        self.index_size = Gauge(
            "driftrec_index_items",
            "Items in this server's live index (published version plus overlay).",
            registry=self.registry,
            multiprocess_mode="max",
        )

    def observe_request(self, method: str, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(method, endpoint, str(status)).inc()
        self.latency.labels(method, endpoint).observe(seconds)

    def observe_ingest(self, accepted: int, duplicates: int, rejected: int) -> None:
        for outcome, count in (
            ("accepted", accepted),
            ("duplicate", duplicates),
            ("rejected", rejected),
        ):
            if count:
                self.events.labels(outcome).inc(count)

    def render(self) -> bytes:
        directory = multiprocess_dir()
        if directory is None:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)
        return generate_latest(registry)
