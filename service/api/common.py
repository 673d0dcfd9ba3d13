"""What the blueprints share: the app's runtime and metrics."""

from __future__ import annotations

from flask import current_app

from service.metrics import Metrics
from service.runtime import Runtime

RUNTIME_KEY = "driftrec"
METRICS_KEY = "driftrec.metrics"


def get_runtime() -> Runtime:
    return current_app.extensions[RUNTIME_KEY]  # type: ignore[no-any-return]


def get_metrics() -> Metrics:
    return current_app.extensions[METRICS_KEY]  # type: ignore[no-any-return]
