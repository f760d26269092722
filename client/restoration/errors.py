"""Typed errors of the restoration engine; the CLI and the site daemon turn them into messages."""

from __future__ import annotations


class RestorationError(Exception):
    """Base class of every restoration error."""


class DegradationSpecError(RestorationError, ValueError):
    """A degradation SPEC string is malformed or names an unknown degradation or parameter."""


class RestorationInputError(RestorationError, ValueError):
    """An input image cannot be restored (NaN, wrong ndim or channels, smaller than the model)."""


class ModelDirError(RestorationError, FileNotFoundError):
    """A model folder lacks the prior, bridge or kernel prior the chosen method needs."""


class UnsupportedMethodError(RestorationError, ValueError):
    """The method cannot solve this degradation (e.g. CDDB on an unknown blur)."""


class TrainingDivergedError(RestorationError, RuntimeError):
    """The training loss became NaN or infinite; nothing is saved past the last good checkpoint."""
