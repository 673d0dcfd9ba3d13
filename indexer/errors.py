"""The indexer's exceptions."""


class IndexerError(Exception):
    """Base class of every error raised by `indexer`."""


class IndexCorrupt(IndexerError, ValueError):
    """An index file does not match its recorded checksum or cannot be read."""


class EmbedderUnavailable(IndexerError, RuntimeError):
    """The configured embedding model cannot be loaded."""
