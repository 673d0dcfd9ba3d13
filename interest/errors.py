"""The interest package's exceptions."""


class InterestError(Exception):
    """Base class of every error raised by `interest`."""


class ModelCorrupt(InterestError, ValueError):
    """A model file does not match its recorded checksum or cannot be read."""


class ProfileDrift(InterestError, AssertionError):
    """A stored profile differs from the one rebuilt from its events."""
