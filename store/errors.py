"""The store's exceptions: plain not-found / conflict errors; only `service` maps them to HTTP."""


class StoreError(Exception):
    """Base class of every error raised by `store`."""


class NotFound(StoreError, LookupError):
    """The requested row does not exist (or is deleted)."""


class Conflict(StoreError, ValueError):
    """The write conflicts with the current state."""


class SchemaOutOfDate(StoreError, RuntimeError):
    """The database schema is behind the code's migrations."""
