"""The store's exceptions: plain not-found / conflict errors; only `service` maps them to HTTP."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every error raised by `store`."""


class NotFound(StoreError, LookupError):
    """The requested row does not exist (or is deleted)."""


class Conflict(StoreError, ValueError):
    """The write conflicts with the current state."""


class SchemaOutOfDate(StoreError, RuntimeError):
    """The database schema is behind the code's migrations."""


class ImportFormatError(StoreError, ValueError):
    """An import file is malformed; the message names the file and, where known, the line."""

    def __init__(self, path: object, line: int | None, reason: str) -> None:
        self.path = str(path)
        self.line = line
        self.reason = reason
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}")

    def __reduce__(self) -> tuple[type[ImportFormatError], tuple[str, int | None, str]]:
        # Pickled with its own arguments: an import's reading process sends it to the writer.
        return type(self), (self.path, self.line, self.reason)
