"""Offline evaluation harness (shared/EVALUATION.md): splits, metrics, baselines, reports.

`evaluate` runs the ID-only baselines in numpy and the content/driftrec methods through the
production code paths (import, reindex, profiles, ingest, recommender) on a temporary database.
Attributes load lazily so that the command line starts without numpy, SciPy or SQLAlchemy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from interest.evaluation.errors import EvaluationError
from interest.evaluation.names import METHODS, PROTOCOLS

if TYPE_CHECKING:
    from interest.evaluation.harness import EvaluationConfig, evaluate

__all__ = ["METHODS", "PROTOCOLS", "EvaluationConfig", "EvaluationError", "evaluate"]


def __getattr__(name: str) -> Any:
    if name in ("EvaluationConfig", "evaluate"):
        from interest.evaluation import harness

        return getattr(harness, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
