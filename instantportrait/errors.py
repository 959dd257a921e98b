"""Typed errors the app, the CLI and the benchmark catch and turn into one clear message each."""


class InstantPortraitError(Exception):
    """Base class: every error we raise on purpose."""


class ModelNotAvailableError(InstantPortraitError, OSError):
    """A model is neither a local folder nor in the cache, and cannot be downloaded now (offline)."""


class NoFaceError(InstantPortraitError, ValueError):
    """No face was detected where one is needed."""


class InvalidImageError(InstantPortraitError, ValueError):
    """A file or object is not a readable image."""
