"""Error and warning types, and the one helper that writes their messages.

Every message names the API, states the rule, shows the value and suggests the fix:
``hodfunc.derivative: order must be an int >= 0, got -1. For a gradient use order=1.``
"""

from __future__ import annotations

__all__ = [
    "ArgumentError",
    "ArgumentTypeError",
    "FallbackWarning",
    "HodfuncError",
    "HodfuncWarning",
    "NonFunctionalModuleError",
    "PiecewiseLinearWarning",
    "PrecisionWarning",
    "ShapeError",
    "UnsupportedOperationError",
    "message",
]


class HodfuncError(Exception):
    """Base class of every error hodfunc raises on purpose."""


class ArgumentError(HodfuncError, ValueError):
    """An option or input has a value the API does not accept."""


class ArgumentTypeError(HodfuncError, TypeError):
    """An option or input has a type the API does not accept."""


class ShapeError(ArgumentError):
    """Shapes or batch sizes do not fit together."""


class UnsupportedOperationError(HodfuncError, NotImplementedError):
    """A method cannot handle an operation the function performs (for example a Taylor rule)."""


class NonFunctionalModuleError(HodfuncError, RuntimeError):
    """A module cannot be treated per sample, for example BatchNorm in training mode under vmap."""


class HodfuncWarning(UserWarning):
    """Base class of hodfunc's warnings."""


class PrecisionWarning(HodfuncWarning):
    """A dtype is too coarse for the derivative asked for."""


class PiecewiseLinearWarning(HodfuncWarning):
    """A higher derivative passes through a piecewise-linear op and is zero almost everywhere."""


class FallbackWarning(HodfuncWarning):
    """``method="auto"`` fell back from a fast method to nested torch.func."""


def message(api: str, rule: str, value: object, fix: str = "") -> str:
    """Format ``"<api>: <rule>, got <value>. <fix>"``, the shape of every hodfunc message."""
    text = f"{api}: {rule}, got {value}."
    return f"{text} {fix}" if fix else text
