"""Arithmetic on truncated univariate Taylor series: the recurrences of the nonlinear ops.

A series is a tensor ``a`` of shape ``(K + 1, *S)`` holding normalized coefficients
``a[k] = (d^k/dt^k a(t))(0) / k!``: normalized coefficients neither overflow nor lose precision at
high order (``a[k]`` of ``exp(t)`` is ``1/k!``, whereas its derivatives are all 1 and the products
in the recurrences would carry ``k!``). Every function here returns a series of the same length;
``affine``, ``ode_affine`` and ``pair_affine`` take an affine series' two rows and its order.

The recurrences come from the ODE each function satisfies (Griewank and Walther, "Evaluating
Derivatives", ch. 13). With ``y = phi(a)`` and ``y' = u a'`` where ``u`` is itself a series,
comparing coefficients of ``t^(k-1)`` gives ``k y_k = sum_{j=1..k} j a_j u_{k-j}``: ``exp``
(``u = y``), ``tanh`` (``u = 1 - y^2``), ``sigmoid`` (``u = y - y^2``), ``tan`` (``u = 1 + y^2``),
``sin``/``cos`` together, ``sinh``/``cosh`` together. When ``u`` does not depend on ``y``
(``atan``, ``erf``, ``asinh``...) ``y`` is the integral of the Cauchy product ``u a'``. ``log``,
``sqrt``, reciprocal/division and powers have their own O(K^2) recurrences. Each step is a few
tensor ops over the whole tensor, so an op costs O(K) kernel launches and O(K^2 numel) flops.
"""

from __future__ import annotations

import contextvars
import functools
import math
from collections.abc import Callable

import torch
from torch import Tensor

from .._functorch import physical_numel, physically_dense, tracing, transformed, writable
from ._memory import compact, empty_series, stack_dense

__all__ = [
    "affine",
    "asinh",
    "atan",
    "cauchy",
    "cos",
    "cosh",
    "divide",
    "erf",
    "exp",
    "expm1",
    "log",
    "log1p",
    "ode_affine",
    "pair_affine",
    "power",
    "reciprocal",
    "second_order",
    "sigmoid",
    "sin",
    "sinh",
    "sqrt",
    "sum_of_squares",
    "tan",
    "tanh",
]

Series = Tensor


def _k_weights(a: Tensor, start: int, stop: int) -> Tensor:
    """``[start, ..., stop - 1]`` shaped to broadcast along ``a``'s leading dim."""
    w = torch.arange(start, stop, dtype=a.dtype, device=a.device)
    return w.reshape(-1, *([1] * (a.dim() - 1)))


_LARGE = 1 << 15
"""Elements per coefficient above which sums run as ``addcmul`` chains (fewer memory passes),
in place and into one preallocated series where allowed (``_Output``); below it they run as one
stack-multiply-sum (fewer kernel launches)."""


def _large(t: Tensor) -> bool:
    return physical_numel(t) >= _LARGE


def _times(a: Tensor, b: Tensor, scale: float, out: Tensor | None = None) -> Tensor:
    """``scale * a * b`` in one pass (``addcmul`` onto a zero scalar), into ``out`` if given."""
    if scale == 1.0:
        return torch.mul(a, b, out=out)
    return torch.addcmul(a.new_zeros(()), a, b, value=scale, out=out)


def _fma(acc: Tensor, a: Tensor, b: Tensor, scale: float, in_place: bool) -> Tensor:
    """``acc + scale * a * b``, in ``acc``'s memory if ``in_place`` (a fresh, writable sum)."""
    if in_place:
        return acc.addcmul_(a, b, value=scale)
    return torch.addcmul(acc, a, b, value=scale)


def _dot(w: Tensor, ys: list[Tensor], scale: float = 1.0) -> Tensor:
    """``scale * sum_i w[i] * ys[i]`` for ``i < len(ys)``."""
    if _large(ys[0]):  # one fused pass per term, the scale folded in
        acc = _times(w[0], ys[0], scale)
        for i in range(1, len(ys)):
            acc = torch.addcmul(acc, w[i], ys[i], value=scale)
        return acc
    out = w[0] * ys[0] if len(ys) == 1 else (w[: len(ys)] * torch.stack(ys)).sum(0)
    return out * scale if scale != 1.0 else out


def _square(ys: list[Tensor], m: int, scale: float = 1.0) -> Tensor:
    """Coefficient ``m`` of ``scale * y^2``: ``scale * sum_{i=0..m} y_i y_{m-i}``."""
    if m == 0:
        return ys[0] * ys[0] * scale if scale != 1.0 else ys[0] * ys[0]
    if _large(ys[0]):  # half the products, by symmetry; one fused pass per term
        acc = _times(ys[0], ys[m], 2 * scale)
        in_place = writable(acc)
        for i in range(1, (m + 1) // 2):
            acc = _fma(acc, ys[i], ys[m - i], 2 * scale, in_place)
        if m % 2 == 0:
            acc = _fma(acc, ys[m // 2], ys[m // 2], scale, in_place)
        return acc
    out = (torch.stack(ys[: m + 1]) * torch.stack(ys[m::-1])).sum(0)
    return out * scale if scale != 1.0 else out


def sum_of_squares(rows: Tensor) -> Tensor:
    """``sum_i rows[i]^2`` over the leading axis (the collapsed jet's summed second order).
    Along a dim where the rows only repeat (stride 0) the result has size 1: it broadcasts.

    Many large rows go through an ``addcmul`` chain: it makes no temporary the size of all rows,
    and is a third faster than squaring then summing at 50 directions x 256 units x 256 points.
    """
    rows = compact(rows, keep=0)  # rows repeated along a dim: their sum is too
    if rows.shape[0] < 2 or not _large(rows[0]):
        return (rows * rows).sum(0)
    # unbind, not one select per row: each select's backward would zero-fill a gradient of all
    # the rows, unbind's joins the rows' gradients once
    each = rows.unbind(0)
    acc = each[0] * each[0]
    in_place = writable(acc)
    for row in each[1:]:
        acc = _fma(acc, row, row, 1.0, in_place)
    return acc


def _dense(row: Tensor) -> Tensor:
    """``row`` in one dense block: under ``vmap`` a coefficient of a batched series is strided,
    and the recurrences read it many times (a third slower than dense reads)."""
    return row if physically_dense(row) else row.clone()


Function = Callable[..., Tensor]
"""An elementwise torch function that takes ``out=`` (``torch.tanh``...)."""
Derivative = Callable[[list[Tensor], int], Tensor]
"""``u_of(ys, m)``: coefficient ``m`` of ``u`` in the ODE ``y' = u a'``, from ``y_0..y_m``."""


class _Output:
    """Where a recurrence puts its coefficients: one preallocated series written row by row
    (``empty_series``) for large plain tensors, which saves stacking them at the end (a copy of
    the whole series); otherwise a list, stacked at the end."""

    def __init__(self, size: int, like: Tensor, *inputs: Tensor) -> None:
        """A series of ``size`` rows shaped like ``like``, computed from ``like`` and ``inputs``
        (no preallocated buffer if autograd records any of them)."""
        large = _large(like) and all(map(writable, inputs))
        self.buffer = empty_series(size, like) if large else None
        self.rows: list[Tensor] = []

    def at(self, k: int) -> Tensor | None:
        """Where row ``k`` goes, or ``None`` for new memory."""
        return None if self.buffer is None else self.buffer[k]

    def first(self, phi: Function, a0: Tensor) -> None:
        """Row 0: ``phi(a0)``."""
        self.rows.append(phi(a0, out=self.at(0)))

    def series(self) -> Series:
        return stack_dense(self.rows) if self.buffer is None else self.buffer


def _ode(a: Series, phi: Function, u_of: Derivative, affine: bool) -> Series:
    """Solve ``y' = u a'`` with ``y_0 = phi(a_0)``, where ``u_m = u_of(y, m)`` needs only
    ``y_0..y_m``: ``y_k = sum_{j=1..k} (j / k) a_j u_{k-j}``, the weights in ``addcmul``'s scale.

    ``affine``: ``a = a_0 + a_1 t`` exactly (a linear function of the input), so the sum has one
    term (``ode_affine``).
    """
    K = a.shape[0] - 1
    if affine:
        return ode_affine(a[0], a[1], K, phi, u_of)
    if not _large(a[0]):  # few elements: one stack-multiply-sum per step (fewer launches)
        ja = a[1:] * _k_weights(a, 1, K + 1)
        ys = [phi(a[0])]
        us: list[Tensor] = []
        for k in range(1, K + 1):
            us.append(u_of(ys, k - 1))
            ys.append(_dot(ja, us[::-1], 1.0 / k))
        return stack_dense(ys)
    rows = [_dense(row) for row in a.unbind(0)]
    out = _Output(K + 1, a[0])
    out.first(phi, a[0])
    us = []
    for k in range(1, K + 1):
        us.append(u_of(out.rows, k - 1))
        acc = _times(rows[1], us[k - 1], 1.0 / k, out=out.at(k))
        in_place = writable(acc)
        for j in range(2, k + 1):
            acc = _fma(acc, rows[j], us[k - j], j / k, in_place)
        out.rows.append(acc)
    return out.series()


def ode_affine(a0: Tensor, a1: Tensor, order: int, phi: Function, u_of: Derivative) -> Series:
    """``_ode`` for ``a = a_0 + a_1 t``, given those two rows: ``y_k = a_1 u_{k-1} / k``."""
    if _large(a0):
        a1 = _dense(a1)
    out = _Output(order + 1, a0, a1)
    out.first(phi, a0)
    for k in range(1, order + 1):
        out.rows.append(_times(a1, u_of(out.rows, k - 1), 1.0 / k, out=out.at(k)))
    return out.series()


def _pair(
    a: Series, first: Tensor, second: Tensor, sign: float, affine: bool
) -> tuple[Series, Series]:
    """``s' = c a'``, ``c' = sign * s a'`` (sin/cos with sign -1, sinh/cosh with +1)."""
    K = a.shape[0] - 1
    if affine:
        return pair_affine(a[1], K, first, second, sign)
    s, c = [first], [second]
    ja = a[1:] * _k_weights(a, 1, K + 1)
    for k in range(1, K + 1):
        s_k = _dot(ja, c[::-1], 1.0 / k)
        c_k = _dot(ja, s[::-1], sign / k)
        s.append(s_k)
        c.append(c_k)
    return stack_dense(s), stack_dense(c)


def pair_affine(
    a1: Tensor, order: int, first: Tensor, second: Tensor, sign: float
) -> tuple[Series, Series]:
    """``_pair`` for ``a = a_0 + a_1 t``, given ``a_1``: one term per step."""
    s, c = [first], [second]
    for k in range(1, order + 1):
        step = a1 * (1.0 / k)
        s.append(step * c[k - 1])
        c.append(step * s[k - 1] * sign)
    return stack_dense(s), stack_dense(c)


Entry = tuple[int, int, int, int]
"""One term of a bilinear product of two jets: ``(i, j, k, w)``, ``w a_i b_j`` adds into row
``k``."""

Group = tuple[Tensor | slice, Tensor | slice, Tensor, float, tuple[int, ...]]
"""The terms of one weight: the rows to take of each factor (a slice where they run in order),
the output row of each term (as an index tensor, and as ints for ``EMITTING``), the weight."""

EMITTING: contextvars.ContextVar[bool] = contextvars.ContextVar("EMITTING", default=False)
"""Set while a propagation is recorded for the compiler (``_compiled``): products then sum each
output row by explicit adds, which inductor fuses into one loop, instead of ``index_add``, which
it lowers to atomic scatters (slow, and for some shapes a codegen failure)."""

_TABLES: dict[tuple[object, ...], tuple[Group, ...]] = {}


@functools.cache
def cauchy_pairs(n: int) -> tuple[Entry, ...]:
    """``a_i b_j -> c_(i + j)`` for every ``i + j < n``: the truncated Cauchy product."""
    return tuple((i, k - i, k, 1) for k in range(n) for i in range(k + 1))


def _indexer(rows: list[int], device: torch.device) -> Tensor | slice:
    if rows == list(range(rows[0], rows[0] + len(rows))):
        return slice(rows[0], rows[0] + len(rows))  # a view, not a gather
    return torch.tensor(rows, device=device)


def pair_table(entries: tuple[Entry, ...], like: Tensor) -> tuple[Group, ...]:
    """A product's ``entries`` grouped by weight, as index tensors on ``like``'s device.

    Cached per device, and neither looked up nor kept while a trace records (a cached tensor
    would be a constant the trace cannot see; one made then is a fake one). Made outside
    inference mode: an inference tensor cached during a
    validation pass could never be saved for a backward later."""
    key = (entries, like.device)
    traced = tracing()  # a trace must make its own: a cached tensor is a constant it cannot see
    table = None if traced else _TABLES.get(key)
    if table is not None:
        return table
    groups = []
    with torch.inference_mode(False):
        for weight in sorted({e[3] for e in entries}):
            chosen = [e for e in entries if e[3] == weight]
            groups.append(
                (
                    _indexer([e[0] for e in chosen], like.device),
                    _indexer([e[1] for e in chosen], like.device),
                    torch.tensor([e[2] for e in chosen], device=like.device),
                    float(weight),
                    tuple(e[2] for e in chosen),
                )
            )
    table = tuple(groups)
    if not traced:
        _TABLES[key] = table
    return table


def pair_sum(
    table: tuple[Group, ...],
    a: Tensor,
    b: Tensor,
    size: int,
    multiply: Callable[[Tensor, Tensor], Tensor] = torch.mul,
) -> Tensor:
    """Row ``k`` of the result: the weighted sum of ``multiply(a_i, b_j)`` over its terms.

    Summed by index, not by a 0/1 matrix: an infinite term then reaches its own row only
    (``0 * inf`` would make every row, the value too, ``nan``, and hide the overflow from the
    range check). The weight is ``index_add``'s ``alpha``, not a pass of its own; the sum goes in
    place into new zeros where nothing traces or maps it."""
    if EMITTING.get():
        return _row_sums(table, a, b, size, multiply)
    out: Tensor | None = None
    for ia, ib, k, weight, _ in table:
        products = multiply(a[ia], b[ib])
        if out is None:
            out = products.new_zeros(size, *products.shape[1:])
        if tracing() or transformed(products) or transformed(out):
            out = out.index_add(0, k, products, alpha=weight)
        else:
            out = out.index_add_(0, k, products, alpha=weight)
    assert out is not None
    return out


def _row_sums(
    table: tuple[Group, ...],
    a: Tensor,
    b: Tensor,
    size: int,
    multiply: Callable[[Tensor, Tensor], Tensor],
) -> Tensor:
    """``pair_sum`` by explicit adds per output row (``EMITTING``); a row with no term is zero."""
    rows: list[Tensor | None] = [None] * size
    for ia, ib, _, weight, targets in table:
        products = multiply(a[ia], b[ib])
        if weight != 1:
            products = products * weight
        for term, row in zip(products.unbind(0), targets, strict=True):
            held = rows[row]
            rows[row] = term if held is None else held + term
    some = next(r for r in rows if r is not None)
    return torch.stack([torch.zeros_like(some) if r is None else r for r in rows])


def cauchy(a: Series, b: Series) -> Series:
    """The product series: ``c_k = sum_{i+j=k} a_i b_j`` (shapes broadcast), in a few launches."""
    n = min(a.shape[0], b.shape[0])
    a, b = a[:n], b[:n]
    if n == 1:
        return a * b
    return pair_sum(pair_table(cauchy_pairs(n), a), a, b, n)


def _integrate(y0: Tensor, d: Series) -> Series:
    """The series whose value is ``y0`` and whose derivative series is ``d`` (one shorter)."""
    K = d.shape[0]
    return torch.cat([y0.unsqueeze(0), d / _k_weights(d, 1, K + 1)])


def _derivative(a: Series) -> Series:
    """The series of ``a'``, one shorter."""
    K = a.shape[0] - 1
    return a[1:] * _k_weights(a, 1, K + 1)


def _shift(a: Series, value: Tensor) -> Series:
    """``a`` with coefficient 0 replaced by ``value``."""
    return torch.cat([value.unsqueeze(0), a[1:]])


def _exp_u(ys: list[Tensor], m: int) -> Tensor:
    return ys[m]


def _tanh_u(ys: list[Tensor], m: int) -> Tensor:
    if m == 0:  # 1 - y_0^2 in one pass
        return torch.addcmul(ys[0].new_ones(()), ys[0], ys[0], value=-1.0)
    return _square(ys, m, -1.0)


def _sigmoid_u(ys: list[Tensor], m: int) -> Tensor:
    if m == 0:  # y_0 - y_0^2 in one pass
        return torch.addcmul(ys[0], ys[0], ys[0], value=-1.0)
    return ys[m] - _square(ys, m)


def _tan_u(ys: list[Tensor], m: int) -> Tensor:
    if m == 0:  # 1 + y_0^2 in one pass
        return torch.addcmul(ys[0].new_ones(()), ys[0], ys[0])
    return _square(ys, m)


def exp(a: Series, *, affine: bool = False) -> Series:
    """``exp``: ``y' = y a'``."""
    return _ode(a, torch.exp, _exp_u, affine)


def expm1(a: Series, *, affine: bool = False) -> Series:
    """``exp(a) - 1`` with an accurate value."""
    return _shift(exp(a, affine=affine), torch.expm1(a[0]))


def tanh(a: Series, *, affine: bool = False) -> Series:
    """``tanh``: ``y' = (1 - y^2) a'``."""
    return _ode(a, torch.tanh, _tanh_u, affine)


def sigmoid(a: Series, *, affine: bool = False) -> Series:
    """``sigmoid``: ``y' = (y - y^2) a'``."""
    return _ode(a, torch.sigmoid, _sigmoid_u, affine)


def tan(a: Series, *, affine: bool = False) -> Series:
    """``tan``: ``y' = (1 + y^2) a'``."""
    return _ode(a, torch.tan, _tan_u, affine)


def sin(a: Series, *, affine: bool = False) -> Series:
    """``sin``, computed together with ``cos``."""
    return _pair(a, torch.sin(a[0]), torch.cos(a[0]), -1.0, affine)[0]


def cos(a: Series, *, affine: bool = False) -> Series:
    """``cos``, computed together with ``sin``."""
    return _pair(a, torch.sin(a[0]), torch.cos(a[0]), -1.0, affine)[1]


def sinh(a: Series, *, affine: bool = False) -> Series:
    """``sinh``, computed together with ``cosh``."""
    return _pair(a, torch.sinh(a[0]), torch.cosh(a[0]), 1.0, affine)[0]


def cosh(a: Series, *, affine: bool = False) -> Series:
    """``cosh``, computed together with ``sinh``."""
    return _pair(a, torch.sinh(a[0]), torch.cosh(a[0]), 1.0, affine)[1]


_ODES: dict[Callable[..., Series], tuple[Function, Derivative]] = {
    exp: (torch.exp, _exp_u),
    tanh: (torch.tanh, _tanh_u),
    sigmoid: (torch.sigmoid, _sigmoid_u),
    tan: (torch.tan, _tan_u),
}
_PAIRS: dict[Callable[..., Series], tuple[Function, Function, float, int]] = {
    sin: (torch.sin, torch.cos, -1.0, 0),
    cos: (torch.sin, torch.cos, -1.0, 1),
    sinh: (torch.sinh, torch.cosh, 1.0, 0),
    cosh: (torch.sinh, torch.cosh, 1.0, 1),
}


def affine(rule: Callable[..., Series], a0: Tensor, a1: Tensor, order: int) -> Series | None:
    """The series of ``phi(a_0 + a_1 t)`` to ``order`` from those two rows alone, where ``rule``
    is ``phi``'s series rule, or ``None`` if ``phi`` has no recurrence of its own for that case.

    Seeded at ``x + t v``, a jet stays affine through every linear layer before the first
    nonlinearity; its coefficients 2.. are zeros, which need neither storing nor a matmul.
    """
    ode = _ODES.get(rule)
    if ode is not None:
        return ode_affine(a0, a1, order, *ode)
    pair = _PAIRS.get(rule)
    if pair is not None:
        first, second, sign, index = pair
        return pair_affine(a1, order, first(a0), second(a0), sign)[index]
    return None


def log(a: Series, *, affine: bool = False) -> Series:
    """``log``: ``a y' = a'``, so ``y_k = (a_k - (1/k) sum_{j=1..k-1} j y_j a_{k-j}) / a_0``."""
    K = a.shape[0] - 1
    inv = 1 / a[0]
    ys = [torch.log(a[0])]
    jy: list[Tensor] = []
    for k in range(1, K + 1):
        acc = a[k]
        if k > 1:
            acc = acc - _dot(a[1:k].flip(0), jy) / k
        ys.append(acc * inv)
        jy.append(ys[k] * k)
    return torch.stack(ys)


def log1p(a: Series, *, affine: bool = False) -> Series:
    """``log(1 + a)`` with an accurate value."""
    return _shift(log(_shift(a, 1 + a[0])), torch.log1p(a[0]))


def divide(b: Series, a: Series) -> Series:
    """``b / a``: ``y_k = (b_k - sum_{j=1..k} a_j y_{k-j}) / a_0`` (shapes broadcast)."""
    K = min(a.shape[0], b.shape[0]) - 1
    shape = torch.broadcast_shapes(a.shape[1:], b.shape[1:])  # type: ignore[no-untyped-call]
    inv = 1 / a[0]
    ys = [(b[0] * inv).expand(shape)]
    for k in range(1, K + 1):
        ys.append((b[k] - _dot(a[1 : k + 1], ys[::-1])) * inv)
    return torch.stack(ys)


def reciprocal(a: Series, *, affine: bool = False) -> Series:
    """``1 / a``."""
    K = a.shape[0] - 1
    inv = 1 / a[0]
    ys = [inv]
    for k in range(1, K + 1):
        ys.append(-_dot(a[1 : k + 1], ys[::-1]) * inv)
    return torch.stack(ys)


def sqrt(a: Series, *, affine: bool = False) -> Series:
    """``sqrt``: ``y^2 = a``, so ``y_k = (a_k - sum_{j=1..k-1} y_j y_{k-j}) / (2 y_0)``."""
    K = a.shape[0] - 1
    y0 = torch.sqrt(a[0])
    half_inv = 0.5 / y0
    ys = [y0]
    for k in range(1, K + 1):
        acc = a[k]
        if k > 1:
            acc = acc - (_square([*ys[:k], torch.zeros_like(y0)], k))
        ys.append(acc * half_inv)
    return torch.stack(ys)


def power(a: Series, r: float, *, affine: bool = False) -> Series:
    """``a ** r`` for a real scalar ``r``.

    Non-negative integers ``n`` of an affine ``a`` use the binomial theorem,
    ``y_k = C(n, k) a_0^(n-k) a_1^k`` (no product of an infinite ``a_0`` with a zero coefficient:
    ``x**2`` at ``inf`` has derivatives ``inf, inf, 2, 0`` as in nested mode); of any other ``a``
    repeated Cauchy products (exact, also where ``a_0 = 0``); negative integers the reciprocal of
    that; other exponents the recurrence of ``a y' = r y a'``:
    ``y_k = sum_{j=0..k-1} ((k - j) r - j) a_{k-j} y_j / (k a_0)``.
    """
    if float(r).is_integer() and abs(r) <= 64:
        n = int(r)
        if n < 0:
            return reciprocal(power(a, -n))
        if affine:
            return _binomial_power(a, n)
        result: Series | None = None
        base = a
        while n:
            if n & 1:
                result = base if result is None else cauchy(result, base)
            n >>= 1
            if n:
                base = cauchy(base, base)
        if result is None:
            return torch.cat([torch.ones_like(a[:1]), torch.zeros_like(a[1:])])
        return result
    K = a.shape[0] - 1
    inv = 1 / a[0]
    ys = [torch.pow(a[0], r)]
    for k in range(1, K + 1):
        w = torch.tensor(
            [(k - j) * r - j for j in range(k)], dtype=a.dtype, device=a.device
        ).reshape(-1, *([1] * (a.dim() - 1)))
        ys.append((w * a[1 : k + 1].flip(0) * torch.stack(ys)).sum(0) * inv / k)
    return torch.stack(ys)


def _binomial_power(a: Series, n: int) -> Series:
    """``(a_0 + a_1 t)^n`` for an integer ``n >= 0``: ``C(n, k) a_0^(n-k) a_1^k`` up to ``k = n``,
    zeros after. Powers by repeated products (no ``pow`` with a tensor exponent, which a Taylor
    transform around this one would differentiate as ``exp(e log a)``, ``nan`` at ``a = 0``)."""
    K = a.shape[0] - 1
    top = min(n, K)
    a0, a1 = a[0], a[1]
    low = [torch.ones_like(a0)]  # a_0^j
    for _ in range(n):
        low.append(a0 if len(low) == 1 else low[-1] * a0)
    rows = []
    high = torch.ones_like(a1)  # a_1^k
    for k in range(top + 1):
        if k:
            high = a1 if k == 1 else high * a1
        row = low[n - k] * high
        comb = math.comb(n, k)
        rows.append(row * float(comb) if comb != 1 else row)
    out = torch.stack(rows)
    if top == K:
        return out
    return torch.cat([out, torch.zeros_like(a[: K - top])])


def atan(a: Series, *, affine: bool = False) -> Series:
    """``atan``: ``y' = a' / (1 + a^2)``."""
    sq = cauchy(a, a)[:-1]
    u = reciprocal(_shift(sq, 1 + sq[0]))
    return _integrate(torch.atan(a[0]), cauchy(_derivative(a), u))


def asinh(a: Series, *, affine: bool = False) -> Series:
    """``asinh``: ``y' = a' / sqrt(1 + a^2)``."""
    sq = cauchy(a, a)[:-1]
    u = power(_shift(sq, 1 + sq[0]), -0.5)
    return _integrate(torch.asinh(a[0]), cauchy(_derivative(a), u))


def erf(a: Series, *, affine: bool = False) -> Series:
    """``erf``: ``y' = (2 / sqrt(pi)) exp(-a^2) a'``."""
    u = exp(-cauchy(a, a)[:-1]) * (2 / math.sqrt(math.pi))
    return _integrate(torch.erf(a[0]), cauchy(_derivative(a), u))


def _tanh2(a0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    y = torch.tanh(a0)
    d1 = 1 - y * y
    return y, d1, -y * d1


def _sigmoid2(a0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    y = torch.sigmoid(a0)
    d1 = y * (1 - y)
    return y, d1, d1 * (0.5 - y)


def _exp2(a0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    y = torch.exp(a0)
    return y, y, 0.5 * y


def _sin2(a0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    s = torch.sin(a0)
    return s, torch.cos(a0), -0.5 * s


def _cos2(a0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    c = torch.cos(a0)
    return c, -torch.sin(a0), -0.5 * c


_SECOND_ORDER: dict[Callable[..., Series], Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]] = {
    tanh: _tanh2,
    sigmoid: _sigmoid2,
    exp: _exp2,
    sin: _sin2,
    cos: _cos2,
}


def second_order(rule: Callable[..., Series], a0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``phi(a0)``, ``phi'(a0)`` and ``phi''(a0) / 2``, where ``rule`` is ``phi``'s series rule:
    all that collapsed (forward-Laplacian) mode needs of ``phi``.

    Closed forms for the common activations take a third of the kernel launches of the general
    way, the series of ``a0 + t`` to order 2.
    """
    closed = _SECOND_ORDER.get(rule)
    if closed is not None:
        return closed(a0)
    d = rule(torch.stack([a0, torch.ones_like(a0), torch.zeros_like(a0)]), affine=True)
    return d[0], d[1], d[2]
