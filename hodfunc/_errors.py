"""Error and warning types, and the one helper that writes their messages.

Every message names the API, states the rule, shows the value and suggests the fix:
``hodfunc.derivative: order must be an int >= 0, got -1. For a gradient use order=1.``
"""

from __future__ import annotations

__all__ = [
    "ArgumentError",
    "ArgumentTypeError",
    "CacheWarning",
    "CompileError",
    "FallbackWarning",
    "HodfuncError",
    "HodfuncWarning",
    "NonFunctionalError",
    "NonFunctionalModuleError",
    "PiecewiseLinearWarning",
    "PrecisionWarning",
    "RangeWarning",
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
    """A method cannot handle an operation the function performs (for example a Taylor rule).
    ``ops`` names the operations, where known (``aten.lgamma.default``)."""

    def __init__(self, text: str, ops: tuple[str, ...] = ()) -> None:
        super().__init__(text)
        self.ops = ops


class CompileError(HodfuncError, RuntimeError):
    """A transform was called where ``torch.compile(fullgraph=True)`` traces it, which that
    method does not support (the message names the way out)."""


class NonFunctionalModuleError(HodfuncError, RuntimeError):
    """A module cannot be treated per sample, for example BatchNorm in training mode under vmap."""


class HodfuncWarning(UserWarning):
    """Base class of hodfunc's warnings."""


class PrecisionWarning(HodfuncWarning):
    """A dtype is too coarse for the derivative asked for."""


class PiecewiseLinearWarning(HodfuncWarning):
    """A higher derivative passes through a piecewise-linear op and is zero almost everywhere."""


class FallbackWarning(HodfuncWarning):
    """``method="auto"`` fell back from a fast method to nested torch.func, or
    ``method="compiled"`` ran a program eagerly that torch.compile could not compile (the same
    program: the same results)."""


class BatchWarning(HodfuncWarning):
    """A batch of points reached a per-point transform without ``vmap`` or ``batched``, and the
    answer looks per element: the derivative with respect to one entry of the batch."""


class CacheWarning(HodfuncWarning):
    """A Taylor-mode trace cannot be cached soundly, so the function is traced on every call."""


class RangeWarning(HodfuncWarning):
    """A derivative lies outside the range of its dtype (it overflows to inf or underflows to 0),
    so the value returned for it is not the derivative. The message names the orders, their
    magnitude and the fix (usually float64); ``overflow``, ``underflow`` and ``imprecise`` list
    the orders (``imprecise``: in range, but computed from a subnormal coefficient)."""

    def __init__(
        self,
        text: str,
        *,
        overflow: tuple[int, ...] = (),
        underflow: tuple[int, ...] = (),
        imprecise: tuple[int, ...] = (),
    ) -> None:
        super().__init__(text)
        self.overflow = overflow
        self.underflow = underflow
        self.imprecise = imprecise

    @property
    def orders(self) -> tuple[int, ...]:
        """Every order named, sorted."""
        return tuple(sorted({*self.overflow, *self.underflow, *self.imprecise}))


class NonFunctionalError(HodfuncError, RuntimeError):
    """The function is not a function of its tensors alone: it reads a tensor's value into Python
    (``.item()``, ``float(x)``, ``if x > 0``) or draws random numbers, so no method can give its
    derivative. ``ops`` names what it did."""

    def __init__(self, text: str, ops: tuple[str, ...] = ()) -> None:
        super().__init__(text)
        self.ops = ops


def message(api: str, rule: str, value: object, fix: str = "") -> str:
    """Format ``"<api>: <rule>, got <value>. <fix>"``, the shape of every hodfunc message."""
    text = f"{api}: {rule}, got {value}."
    return f"{text} {fix}" if fix else text
