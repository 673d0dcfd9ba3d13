"""What the blueprints share: the app's runtime and metrics, and the ranked-items shape."""

from __future__ import annotations

from typing import Any

from flask import current_app

from interest.recommend import Recommendation
from service.metrics import Metrics
from service.runtime import Runtime

RUNTIME_KEY = "driftrec"
METRICS_KEY = "driftrec.metrics"


def get_runtime() -> Runtime:
    return current_app.extensions[RUNTIME_KEY]  # type: ignore[no-any-return]


def get_metrics() -> Metrics:
    return current_app.extensions[METRICS_KEY]  # type: ignore[no-any-return]


def ranked(recommendation: Recommendation) -> dict[str, Any]:
    """``items``, ``index_version`` and ``model_version`` of a ranked answer."""
    return {
        "items": [
            {"id": item.id, "title": item.title, "score": float(item.score)}
            for item in recommendation.items
        ],
        "index_version": recommendation.index_version,
        "model_version": recommendation.model_version,
    }
