"""The harness's own errors: each ends a run with one line naming what is wrong (``python -m sdar_train``
prints it and exits 2; ``SDAR_DEBUG=1`` shows the traceback instead)."""

from __future__ import annotations

__all__ = ["CheckpointError", "ConfigError", "TrainingError"]


class ConfigError(ValueError):
    """A setting that cannot work, named in the message; raised before any model is loaded."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed exactly; the message names the file and what is wrong."""


class TrainingError(RuntimeError):
    """A run that cannot go on usefully (e.g. steps in a row whose losses were all non-finite); the message
    says what happened and where to look."""
