"""``assert_equivalent``: the equivalence suite's public face, for users migrating their own code.

It computes the same derivatives through every method hodfunc has — each registered engine
(``"nested"``, and ``"taylor"`` where available), the imperative adapter, and float64 finite
differences with their own error estimate — and raises with a table of the discrepancies.

>>> import torch
>>> from hodfunc.testing import assert_equivalent
>>> x = torch.tensor(0.5, dtype=torch.float64)
>>> results = assert_equivalent(lambda x: torch.exp(x) * torch.sin(x), x, order=4)
>>> {"nested", "imperative", "finite_difference"} <= set(results)
True
>>> results["nested"][4]  # d^4/dx^4 e^x sin x = -4 e^x sin x
tensor(-3.1618, dtype=torch.float64)
>>> import warnings, hodfunc
>>> with warnings.catch_warnings():  # relu's kink: hodfunc also warns that d2 relu = 0 a.e.
...     warnings.simplefilter("ignore", hodfunc.PiecewiseLinearWarning)
...     assert_equivalent(lambda x: torch.relu(x) ** 2, torch.tensor(0.0), order=2)
Traceback (most recent call last):
...
hodfunc.testing.EquivalenceError: hodfunc.testing.assert_equivalent: ... entries disagree ...
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from . import imperative
from ._errors import ArgumentError, HodfuncError, UnsupportedOperationError, message
from ._transforms import _derivative
from ._transforms._method import Method, available_methods, is_method
from ._validate import check_argnums, check_callable, check_order, select_arg

__all__ = ["EquivalenceError", "assert_equivalent", "default_rtol", "finite_difference_partial"]

REFERENCE = "nested"
FINITE_DIFFERENCE = "finite_difference"
IMPERATIVE = "imperative"
_MAX_DEFAULT_PARTIALS = 12
_FLOAT64_RTOL = 1e-10
_FD_FLOOR = 1e-9
"""Finite differences (in float64) are held to ten times their error estimate plus this much of
the value's magnitude, or the exact methods' ``rtol`` where that is larger."""


def default_rtol(dtype: torch.dtype, order: int) -> float:
    """The exact methods' default relative tolerance for derivatives of ``order`` in ``dtype``.

    1e-10 in float64; otherwise ``64 * 2**order`` units of ``finfo(dtype).eps``: rounding grows
    with the order (measured: up to ~200 eps at order 4 for ``tanh(3x)**2`` in float32, float16
    and bfloat16 alike), so float32 gets 7.6e-6 at order 0 and 1.2e-4 at order 4.

    >>> import torch
    >>> default_rtol(torch.float64, 4), round(default_rtol(torch.float32, 0), 8)
    (1e-10, 7.63e-06)
    """
    if dtype == torch.float64:
        return _FLOAT64_RTOL
    eps = float(torch.finfo(dtype if dtype.is_floating_point else torch.get_default_dtype()).eps)
    return float(64 * 2**order * eps)


class EquivalenceError(HodfuncError, AssertionError):
    """Two methods disagree beyond tolerance; the message holds the table of discrepancies."""


@dataclass(frozen=True)
class _Row:
    method: str
    quantity: str
    value: float
    reference: float
    tolerance: float

    @property
    def error(self) -> float:
        return abs(self.value - self.reference)


def _stencil(order: int) -> tuple[np.ndarray, np.ndarray]:
    """Central finite-difference offsets and weights for ``d^order/dx^order``, accuracy O(h^4)."""
    m = order // 2 + 2
    offsets = np.arange(-m, m + 1, dtype=np.float64)
    vandermonde = np.vander(offsets, increasing=True).T  # row i: offsets**i
    rhs = np.zeros(len(offsets))
    rhs[order] = math.factorial(order)
    return offsets, np.linalg.solve(vandermonde, rhs)


def finite_difference_partial(
    fn: Callable[[Tensor], Tensor], x: Tensor, wrt: Sequence[int], step: float
) -> Tensor:
    """``d^n fn / dx[wrt...]`` at ``x`` by a tensor product of central stencils, in ``x``'s dtype.

    Each distinct index gets a 1-D stencil of its multiplicity with spacing ``step``. The result is
    accurate to O(step^4) up to rounding; compare two steps to estimate the error.

    >>> import torch
    >>> x = torch.tensor([1.0, 2.0], dtype=torch.float64)
    >>> d = finite_difference_partial(lambda x: x[0] ** 2 * x[1] ** 3, x, (0, 1, 1), 1e-2)
    >>> round(d.item(), 6)
    24.0
    """
    counts: dict[int, int] = {}
    for i in wrt:
        counts[i] = counts.get(i, 0) + 1
    stencils = [(i, *_stencil(k)) for i, k in counts.items()]
    flat = x.detach().reshape(-1)
    total: Tensor | None = None
    grids = itertools.product(*(range(len(off)) for _, off, _ in stencils))
    with torch.no_grad():
        for picks in grids:
            point = flat.clone()
            weight = 1.0
            for (i, offsets, weights), j in zip(stencils, picks, strict=True):
                point[i] += offsets[j] * step
                weight *= weights[j]
            term = fn(point.reshape(x.shape)) * weight
            total = term if total is None else total + term
    assert total is not None
    return total / step ** len(wrt)


def _float64(args: tuple[object, ...]) -> tuple[object, ...]:
    return tuple(
        a.detach().double() if isinstance(a, Tensor) and a.is_floating_point() else a for a in args
    )


def _finite_differences(
    f: Callable[..., Tensor],
    args: tuple[object, ...],
    argnum: int,
    quantities: list[tuple[int, ...]],
) -> tuple[Tensor, Tensor]:
    """Finite differences in float64 and their error estimate (the change from step h to 2h)."""
    args64 = _float64(args)
    x = args64[argnum]
    assert isinstance(x, Tensor)

    def fn(point: Tensor) -> Tensor:
        return f(*args64[:argnum], point, *args64[argnum + 1 :]).double()

    scale = max(1.0, float(x.abs().max())) if x.numel() else 1.0
    values, errors = [], []
    for wrt in quantities:
        if not wrt:
            value = fn(x).detach()
            values.append(value)
            errors.append(torch.zeros_like(value))
            continue
        h = scale * float(np.finfo(np.float64).eps) ** (1.0 / (len(wrt) + 4))
        fine = finite_difference_partial(fn, x, wrt, h)
        coarse = finite_difference_partial(fn, x, wrt, 2 * h)
        values.append(fine)
        errors.append((fine - coarse).abs())
    return torch.stack(values), torch.stack(errors)


def _quantities(
    x: Tensor, order: int, wrt: Sequence[Sequence[int]] | None
) -> list[tuple[int, ...]]:
    if wrt is not None:
        return [tuple(w) for w in wrt]
    if x.dim() == 0:
        return [(0,) * k for k in range(order + 1)]
    every = list(itertools.combinations_with_replacement(range(x.numel()), order))
    if len(every) <= _MAX_DEFAULT_PARTIALS:
        return every
    picks = np.linspace(0, len(every) - 1, _MAX_DEFAULT_PARTIALS).round().astype(int)
    return [every[i] for i in picks]


def _engine_method(name: str) -> Method:
    """``name`` as a ``Method``; it was checked against ``available_methods()`` already."""
    if not is_method(name):  # pragma: no cover  (checked by assert_equivalent's caller)
        raise AssertionError(name)
    return name


def _compute(
    method: str,
    f: Callable[..., Tensor],
    args: tuple[object, ...],
    argnum: int,
    scalar: bool,
    order: int,
    quantities: list[tuple[int, ...]],
) -> Tensor:
    if scalar:
        if method == IMPERATIVE:
            return imperative.derivatives(f, order, argnums=argnum)(*args)
        return _derivative.derivatives(f, order, argnums=argnum, method=_engine_method(method))(
            *args
        )
    parts = []
    for wrt in quantities:
        if method == IMPERATIVE:
            parts.append(imperative.partial(f, wrt, argnums=argnum)(*args))
        else:
            engine = _engine_method(method)
            parts.append(_derivative.partial(f, wrt, argnums=argnum, method=engine)(*args))
    return torch.stack(parts)


def _label(scalar: bool, quantity: tuple[int, ...], index: tuple[int, ...]) -> str:
    head = f"order {len(quantity)}" if scalar else f"d/dx{list(quantity)}"
    return head + (f" out{list(index)}" if index else "")


def assert_equivalent(
    f: Callable[..., Tensor],
    *args: object,
    order: int,
    argnums: int = 0,
    methods: Sequence[str] | None = None,
    wrt: Sequence[Sequence[int]] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
) -> dict[str, Tensor]:
    """Compute the same derivatives by every method and raise if any two disagree.

    For a 0-d argument the quantity is ``derivatives(f, order)``; otherwise it is the mixed partials
    listed in ``wrt`` (default: up to 12 multi-indices of length ``order``, evenly spread). Every
    method is compared with ``"nested"`` torch.func in the argument's dtype: exact methods within
    ``atol + rtol * |value|`` (default both ``default_rtol(dtype, order)``: 1e-10 in float64,
    ``64 * 2**order * finfo(dtype).eps`` otherwise, e.g. 7.6e-6 at order 0 in float32); finite
    differences (always in float64) within ten times their own error estimate plus the larger of
    1e-9 and ``rtol`` times ``max(1, |value|)``, since the reference itself is only as exact as
    its dtype.

    Args:
        f: the function; ``args`` are its positional arguments.
        order: the derivative order (ignored for explicit ``wrt``).
        argnums: which argument to differentiate.
        methods: names among the engines (``available_methods()``), ``"imperative"`` and
            ``"finite_difference"``; default all of them (an engine that cannot handle an op of
            ``f`` is then left out rather than failing).
        wrt: explicit multi-indices for a non-0-d argument.

    Returns:
        Each method's result, by name.

    Raises:
        EquivalenceError: with a table of every entry out of tolerance.
    """
    api = "hodfunc.testing.assert_equivalent"
    check_callable(api, f)
    check_order(api, order)
    check_argnums(api, argnums)
    argnum, x = select_arg(api, args, argnums)
    known = [m for m in available_methods() if m != "auto"] + [IMPERATIVE, FINITE_DIFFERENCE]
    explicit = methods is not None
    # compiled: the taylor engine again, seconds of inductor per quantity; asked for by name
    chosen = list(methods) if methods is not None else [m for m in known if m != "compiled"]
    unknown = [m for m in chosen if m not in known]
    if unknown:
        raise ArgumentError(message(api, f"methods must be among {known}", unknown))
    scalar = x.dim() == 0
    quantities = _quantities(x, order, wrt)
    order_used = max((len(q) for q in quantities), default=0)
    exact_rtol = rtol if rtol is not None else default_rtol(x.dtype, order_used)
    exact_atol = atol if atol is not None else exact_rtol
    fd_floor = max(_FD_FLOOR, exact_rtol)

    reference = _compute(REFERENCE, f, args, argnum, scalar, order_used, quantities)
    results: dict[str, Tensor] = {}
    rows: list[_Row] = []
    for method in chosen:
        if method == FINITE_DIFFERENCE:
            value, estimate = _finite_differences(f, args, argnum, quantities)
            ref = reference.double()
            tol = 10 * estimate + fd_floor * ref.abs().clamp(min=1.0)
        else:
            try:
                value = _compute(method, f, args, argnum, scalar, order_used, quantities)
            except UnsupportedOperationError:
                if explicit:
                    raise
                continue
            ref = reference
            tol = exact_atol + exact_rtol * ref.abs()
        results[method] = value
        bad = (value.to(ref.dtype) - ref).abs() > tol
        for flat in torch.nonzero(bad.reshape(len(quantities), -1)).tolist():
            q, o = flat
            index = np.unravel_index(o, ref.shape[1:]) if ref.dim() > 1 else ()
            rows.append(
                _Row(
                    method,
                    _label(scalar, quantities[q], tuple(int(i) for i in index)),
                    float(value[q].reshape(-1)[o]),
                    float(ref[q].reshape(-1)[o]),
                    float(tol[q].reshape(-1)[o]),
                )
            )
    if rows:
        lines = [
            f"{'method':<18} {'quantity':<24} {'value':>14} {'nested':>14} {'|error|':>10} "
            f"{'tolerance':>10}"
        ]
        lines += [
            f"{r.method:<18} {r.quantity:<24} {r.value:>14.8g} {r.reference:>14.8g} "
            f"{r.error:>10.3g} {r.tolerance:>10.3g}"
            for r in rows[:40]
        ]
        more = f"\n... and {len(rows) - 40} more" if len(rows) > 40 else ""
        raise EquivalenceError(
            f"{api}: {len(rows)} entries disagree with nested torch.func:\n"
            + "\n".join(lines)
            + more
        )
    return results
