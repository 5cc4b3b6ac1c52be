"""User-facing errors.

An :class:`EdgehazeError` is a problem with the user's input (a file, a flag,
a config key), never a bug. Its message names the file or flag and the fix.
The CLI prints it on one line and exits with status 2, without a traceback.
"""
from __future__ import annotations


class EdgehazeError(Exception):
    """Bad input from the user: the message says what, where and how to fix."""


class MissingWeightsError(EdgehazeError):
    """Pretrained weights were needed but no local path was given."""


class ImageReadError(EdgehazeError):
    """An image file could not be read or decoded."""

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"{path}: cannot read image ({reason})")
        self.path = path
        self.reason = reason


class CheckpointError(EdgehazeError):
    """A checkpoint file is missing, truncated, unsafe or of another model."""


class ConfigError(EdgehazeError):
    """A config file or key=value override is invalid."""
