"""Errors that name the problem and the fix.

Every error a user can trigger with bad input derives from :class:`DistilleryError`, so scripts
can print the message alone (no traceback) and exit non-zero.
"""

from __future__ import annotations


class DistilleryError(Exception):
    """Base class: the message says what is wrong and how to fix it."""


class ConfigError(DistilleryError, ValueError):
    """A bad option: unknown loss or dataset name, malformed spec, impossible combination."""


class ShapeMismatchError(DistilleryError, ValueError):
    """Student and teacher tensors a loss compares do not line up."""


class NonFiniteLossError(DistilleryError, FloatingPointError):
    """The training loss became NaN or infinite; nothing was written for that step."""


class CheckpointError(DistilleryError, RuntimeError):
    """A checkpoint is missing, incomplete, or does not fit the model it is loaded into."""


class DivergenceError(DistilleryError, FloatingPointError):
    """The training loss exploded far above where it started."""
