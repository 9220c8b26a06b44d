"""Domain errors raised by services; app.py turns them into HTTP responses with a clear `detail`."""

from __future__ import annotations


class NotFound(LookupError):
    """404: the named run, dataset, checkpoint or file does not exist (or may not be served)."""


class Conflict(RuntimeError):
    """409: the request is valid but not in the run's current state (e.g. deleting a running run)."""


class Invalid(ValueError):
    """422 with `{"detail": [{"field", "message"}]}`."""

    def __init__(self, errors: list[dict[str, str]]):
        self.errors = errors
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors))

    @classmethod
    def one(cls, field: str, message: str) -> "Invalid":
        return cls([{"field": field, "message": message}])
