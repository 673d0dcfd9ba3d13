"""``/healthz`` (process alive, no I/O), ``/readyz`` (database and index), ``/metrics``."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify
from sqlalchemy.exc import SQLAlchemyError

from indexer.errors import IndexerError
from service.api.common import get_metrics, get_runtime
from service.contract import operation
from service.errors import error_body
from service.schemas import Health, NotReady, Ready
from store.errors import StoreError

log = logging.getLogger(__name__)

bp = Blueprint("health", __name__)


@bp.get("/healthz")
@operation("Process alive (no I/O)", response=Health, response_description="Alive")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@bp.get("/readyz")
@operation(
    "Database reachable and active index loaded",
    response=Ready,
    response_description="Ready",
    responses={503: (NotReady, "Not ready")},
)
def readyz() -> Response | dict[str, object]:
    """Ready when the database answers and the active index version is loaded."""
    index = get_runtime().index
    try:
        index.refresh()
    except (SQLAlchemyError, StoreError, IndexerError, OSError) as exc:
        log.warning("not ready error=%s", type(exc).__name__)
        return _unavailable(f"database or index unavailable: {type(exc).__name__}")
    if not index.loaded:
        return _unavailable("index not loaded yet")
    return {"status": "ok", "index_version": index.version_id, "index_items": len(index)}


@bp.get("/metrics")
@operation(
    "Prometheus metrics",
    text_response=("text/plain", {"type": "string"}),
    response_description="Prometheus text format",
)
def metrics() -> Response:
    registry = get_metrics()
    return Response(registry.render(), mimetype=None, content_type=registry.content_type)


def _unavailable(message: str) -> Response:
    response = jsonify({"status": "unavailable", **error_body("unavailable", message)})
    response.status_code = 503
    return response
