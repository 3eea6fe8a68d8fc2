"""What a failed tracking call means: the caller's error, and whether retrying can help.

Kept apart from the tracker so the reachability checks and the outbox raise and classify errors
without importing each other (and without importing MLflow until an error needs classifying).
"""

from __future__ import annotations

__all__ = ["TrackingUnavailable", "is_permanent"]


class TrackingUnavailable(RuntimeError):
    """The tracking backend cannot be reached (or written) and the caller needs an answer from it."""


def is_permanent(err: BaseException) -> bool:
    """4xx answers (bar 429) and type/value errors fail the same way on every try; the rest may pass later."""
    from mlflow.exceptions import MlflowException

    if isinstance(err, MlflowException):
        status = err.get_http_status_code()
        return 400 <= status < 500 and status != 429
    # A local file that is gone (an artifact whose temporary copy was removed) stays gone.
    return isinstance(err, TypeError | ValueError | KeyError | FileNotFoundError)
