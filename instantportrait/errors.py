"""Typed errors the app, the CLI and the benchmark catch and turn into one clear message each, and the exit codes
every command maps them to (``edit``, ``stream``, ``models``, ``download``, ``identity`` and ``python -m benchmark``
share them)."""

EXIT_OK = 0  # done
EXIT_INPUT = 2  # bad input: a missing, corrupt or non-image file, an empty instruction, a bad argument
EXIT_MODEL = 3  # a model is not available (not here, and cannot be downloaded now)
EXIT_NO_FACE = 4  # no face found where one is needed


class InstantPortraitError(Exception):
    """Base class: every error we raise on purpose."""


class ModelNotAvailableError(InstantPortraitError, OSError):
    """A model is neither a local folder nor in the cache, and cannot be downloaded now (offline)."""


class NoFaceError(InstantPortraitError, ValueError):
    """No face was detected where one is needed."""


class InvalidImageError(InstantPortraitError, ValueError):
    """A file or object is not a readable image."""
