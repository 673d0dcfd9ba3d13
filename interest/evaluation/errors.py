"""The evaluation harness's exception."""

from interest.errors import InterestError


class EvaluationError(InterestError, ValueError):
    """The dataset or the requested evaluation cannot be used (the message says why)."""
