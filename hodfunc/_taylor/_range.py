"""Range-safe derivatives from Taylor coefficients, at any order the engine allows.

The engine propagates normalized coefficients ``c_k = f^(k)/k!`` of ``f(x + t v)``; the
derivatives are ``d_k = k! c_k``. At high order ``c_k`` leaves the dtype's range although ``d_k``
does not: ``exp(0.01 x)`` at order 100 has ``d_100 = 1e-200 e^(0.01 x)`` but
``c_100 = 1e-358``, below float64's smallest number; ``exp`` at order 40 has ``d_40 = e^x`` and
``c_40 = 1e-48`` (float32 keeps 1e-38). And ``k!`` itself overflows float64 from ``k = 171`` on.

The jet of ``f(x + t r v)`` has coefficients ``c_k r^k`` for any radius ``r``: the same program,
its seed direction scaled. With ``r = 2^s`` the scaling is exact, and the derivatives come back as
``d_k = (c_k r^k) k! / r^k``, the factor ``k! / r^k`` applied in float64 as a mantissa and powers
of two (so it never overflows on the way, ``_to_derivatives``). Every radius gives the same
result mathematically, so the result stays differentiable (a gradient with respect to the
weights flows through whichever radius each entry comes from), and composes with ``vmap``.

The hot path is ``r = 1``, as before, plus one look at the physical values (unwrapped from every
``torch.func`` level; skipped while a dispatch mode traces): one sum of the derivatives (any
non-finite entry makes it non-finite) and one maximum of ``2^-W / |c_k|`` (above 1 exactly for a
nonzero coefficient below ``2^-W``), read with one host sync. Trouble is a non-finite derivative
where the value is finite, or a nonzero coefficient below ``2^-W`` (``W`` about half the dtype's
exponent range: ``sqrt(finfo.tiny)``), where products in the recurrences start to underflow.
Exact zeros are not trouble: they are structural (polynomials, ReLU networks, ``sin``'s even
orders at 0).

Only then does ``_Ladder`` run: more radii, planned from the magnitudes seen so far, until every
order's coefficient sits inside ``[2^-W, 2^W]`` at one of them; each entry takes its value from
the radius that brings its coefficient closest to 1 (``r = 1`` wherever that was inside). An order
that is zero at every radius is a genuine zero; one that is non-finite at every radius, down to
tiny radii, is a genuine singularity (``sqrt`` at 0) and is returned as it is. A derivative that
lies outside the dtype's range itself is returned as ``inf`` or ``0`` with a ``RangeWarning``
naming the orders, their magnitude and the fix.
"""

from __future__ import annotations

import functools
import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .._errors import RangeWarning, message
from .._functorch import may_record, outside_functorch, physical, tracing

__all__ = ["derivatives", "to_derivatives"]

Rerun = Callable[[int], Tensor]
"""``s -> `` the coefficients of ``f(x + t 2^s v)`` (the same propagation, seed scaled)."""

ROUNDS = 4
"""Planning rounds of the slow path: each runs the radii the magnitudes seen so far call for."""
MAX_RUNS = 16
"""Most propagations of one slow path (the radius 1 included)."""
_EXACT_FACTORIALS = 170
"""``170!`` is the largest factorial float64 holds."""
_STEP = 1000
"""Largest power of two applied in one multiplication (``2^1000`` is a normal float64)."""


def _half_range(dtype: torch.dtype) -> int:
    """``W``: coefficients inside ``[2^-W, 2^W]`` are safe from under- and overflow (about the
    square roots of ``finfo.tiny`` and ``finfo.max``)."""
    info = torch.finfo(dtype)
    return int(min(-math.log2(info.tiny), math.log2(info.max)) // 2)


@functools.cache
def _factorials(order: int) -> tuple[float, ...]:
    """``k!`` as float64 for ``k = 0..order`` (``order <= 170``), rounded once from the exact
    integer."""
    return tuple(float(math.factorial(k)) for k in range(order + 1))


@functools.cache
def _factorial_parts(order: int) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """``k! = m_k 2^(e_k)`` with ``1 <= m_k < 2``, for ``k = 0..order``: any order, no overflow."""
    mantissas: list[float] = []
    exponents: list[int] = []
    value = 1
    for k in range(order + 1):
        value *= max(k, 1)
        e = value.bit_length() - 1
        mantissas.append(value / (1 << e))  # int / int: correctly rounded
        exponents.append(e)
    return tuple(mantissas), tuple(exponents)


def log2_factorial(k: int) -> float:
    """``log2(k!)``, for magnitudes in messages."""
    return math.lgamma(k + 1) / math.log(2)


def _column(values: list[float] | tuple[float, ...], like: Tensor) -> Tensor:
    column = torch.tensor(values, dtype=torch.float64, device=like.device)
    return column.reshape(-1, *([1] * (like.dim() - 1)))


_ONE_FACTOR = 1000
"""Below ``2^1000`` a factor ``k!/2^(k s)`` is a normal float64 (``2^-1022`` to ``2^1024``)."""
_GRADIENT_LOW, _GRADIENT_HIGH = -1060, 1023
"""``log2`` of the factors a gradient survives being multiplied by (subnormals lose digits from
``2^-1022``; below ``2^-1074`` the gradient is 0)."""


def to_derivatives(coefficients: Tensor, s: int = 0) -> Tensor:
    """``d_k = c_k k! / 2^(k s)`` from the coefficients ``c_k 2^(k s)`` of ``f(x + t 2^s v)``.

    At radius 1 and order <= 170 this is one multiplication by ``k!`` (in float64 when ``k!``
    would overflow the dtype). Otherwise the factor is applied in float64 as a mantissa times at
    most three powers of two of at most ``2^1000`` each, moving monotonically towards the result,
    so no intermediate over- or underflows before the result itself would.
    """
    order = coefficients.shape[0] - 1
    dtype = coefficients.dtype
    if s == 0 and order <= _EXACT_FACTORIALS:
        floats = _factorials(order)
        fact = _column(floats, coefficients)
        if dtype == torch.float64 or floats[-1] < torch.finfo(dtype).max:
            return coefficients * fact.to(dtype)
        return (coefficients.double() * fact).to(dtype)
    mantissas, exponents = _factorial_parts(order)
    remaining = [e - k * s for k, e in enumerate(exponents)]
    if all(-_ONE_FACTOR <= e <= _ONE_FACTOR for e in remaining):
        # one factor per order, representable: one multiplication, whose backward multiplies the
        # gradient by that same factor (the stepwise product below would apply its powers of
        # two to the gradient one by one, and underflow it to 0 where the result is tiny)
        factors = [math.ldexp(m, e) for m, e in zip(mantissas, remaining, strict=True)]
        return (coefficients.double() * _column(factors, coefficients)).to(dtype)
    out = coefficients.double() * _column(mantissas, coefficients)
    for _ in range(3):  # |c| is in [2^-1074, 2^1024): beyond 2^+-3000 the result is inf or 0
        if not any(remaining):
            break
        step = [max(-_STEP, min(_STEP, e)) for e in remaining]
        out = out * _column([math.ldexp(1.0, e) for e in step], coefficients)
        remaining = [e - x for e, x in zip(remaining, step, strict=True)]
    return out.to(dtype)


def _inspectable(coefficients: Tensor) -> bool:
    """Whether the values can be looked at: not while a dispatch mode traces (``make_fx``, fake
    tensors: no values), not on the meta device, and something beyond the value to check."""
    return (
        coefficients.shape[0] > 1
        and coefficients.numel() > 0
        and coefficients.device.type != "meta"
        and not tracing()
    )


def derivatives(api: str, coefficients: Tensor, rerun: Rerun, *, read: int = 1) -> Tensor:
    """The derivatives ``k! c_k`` of the coefficients ``c_k`` of ``f(x + t v)`` at radius 1,
    right wherever the dtype can hold them, at every order.

    ``rerun(s)`` propagates again at radius ``2^s``; it is called only where the coefficients at
    radius 1 over- or underflow (see the module docstring). A derivative outside the dtype's
    range comes back as ``inf`` or ``0`` with a ``RangeWarning`` about the orders from ``read``
    on (the caller reads only those; every order is still checked, since the lower orders show
    an underflow of the higher ones coming).
    """
    result = to_derivatives(coefficients)
    if not _inspectable(coefficients):
        if torch.compiler.is_compiling() and coefficients.shape[0] > 1 and coefficients.numel():
            _assert_in_range(api, coefficients, result, read)
        return result
    w = _half_range(coefficients.dtype)
    with outside_functorch():
        # 2^-w / c_k is above 1 exactly where 0 < |c_k| < 2^-w (zeros and infinities give 0,
        # and no subnormal c_k overflows it); any inf or nan makes the sum non-finite
        rest = physical(coefficients)[1:]
        band = rest.new_tensor(math.ldexp(1.0, -w))
        small = torch.div(band, rest).abs_().nan_to_num_(posinf=0.0).amax()
        if float(small + physical(result).sum() * 0) <= 1:  # the hot path's one host sync
            return result  # (nan if the sum is not finite, and nan <= 1 is false)
        underflow = float(small) > 1
    value_finite = torch.isfinite(coefficients[:1])
    coefficient_overflow = ~torch.isfinite(coefficients[1:]) & value_finite
    if not underflow and not _any(coefficient_overflow):
        # every coefficient is fine: only k! c_k itself leaves the dtype (a genuine overflow)
        _warn_range(api, result, coefficients, value_finite, read)
        return result
    return _Ladder(api, coefficients, result, rerun, w, read).run()


def _assert_in_range(api: str, coefficients: Tensor, result: Tensor, read: int) -> None:
    """Inside ``torch.compile`` (a ``method="compiled"`` transform in the user's graph) no value
    can be looked at and no rerun made, so the hot path's screen becomes an assertion in the
    graph: where a coefficient nears under- or overflow, the step raises instead of returning
    zeros or infinities."""
    with outside_functorch():
        rest = physical(coefficients)[1:]
        band = math.ldexp(1.0, -_half_range(coefficients.dtype))
        small = torch.div(band, rest).abs().nan_to_num(posinf=0.0).amax()
        inside = (small + physical(result).sum() * 0) <= 1
        torch._assert_async(
            inside,
            message(
                api,
                "inside torch.compile the Taylor coefficients cannot be rescaled where they under- "
                "or overflow the dtype, and at this call some do (the derivatives from order "
                f"{read} on could come back as 0 or inf)",
                f"order {coefficients.shape[0] - 1} in {str(coefficients.dtype).split('.')[-1]}",
                "Compute in float64, or call this transform outside torch.compile, where it "
                "rescales the series.",
            ),
        )


def _any(mask: Tensor) -> bool:
    with outside_functorch():
        return bool(physical(mask).any())


def _per_order(t: Tensor, reduce: str) -> list[float]:
    """``t`` reduced over everything but its leading (order) dim, batches of ``vmap`` included:
    ``"amax"``, ``"amin"`` or ``"any"``."""
    with outside_functorch():
        p = physical(t)
        if p.shape[1] == 0:
            fill = {"amax": -math.inf, "amin": math.inf, "any": 0.0}[reduce]
            return [fill] * p.shape[0]
        if reduce == "any":
            return [float(b) for b in p.any(1).tolist()]
        values = p.amax(1) if reduce == "amax" else p.amin(1)
        return [float(v) for v in values.tolist()]


def _log2_magnitude(c: Tensor) -> Tensor:
    """``log2 |c|`` in float64, detached: ``-inf`` at 0, ``inf`` or ``nan`` where not finite."""
    return c.detach().double().abs().log2()


@dataclass
class _Best:
    """Per entry, the best radius so far (logical tensors, shaped like the coefficients)."""

    result: Tensor
    """The derivative taken from it, in the coefficients' dtype."""
    score: Tensor
    """``|log2 |c_k r^k||`` there (0 at radius 1 inside the band; ``inf``: no finite nonzero
    coefficient at any radius yet)."""
    log2: Tensor
    """``log2 |c_k r^k|`` there."""
    s: Tensor
    """``log2 r`` of that radius."""
    zero: Tensor
    """Zero at some radius."""
    bad: Tensor
    """Not finite at some radius."""


class _Ladder:
    """The slow path: propagate at more radii ``2^s`` until every order's coefficient is inside
    the band ``[2^-W, 2^W]`` at one of them, and take each entry from its best radius.

    Planning works on per-order magnitudes ``m_k = log2 |c_k|`` at radius 1 (``log2 |c_k r^k| -
    k s`` from any radius where the coefficient was finite and nonzero): a radius ``2^s`` puts
    order ``k`` inside the band where ``|m_k + k s| <= W``, an interval of ``s``. Orders not yet
    seen (zero at every radius where a lower order was decaying into underflow; non-finite at
    every radius) get an interval around a magnitude extrapolated from the highest order seen,
    beyond every radius tried in the direction that helps. One radius per group of overlapping
    intervals (greedy interval stabbing), then again with what the new radii showed.
    """

    def __init__(
        self, api: str, coefficients: Tensor, result: Tensor, rerun: Rerun, w: int, read: int
    ) -> None:
        self.api = api
        self.read = read
        self.rerun = rerun
        self.w = w
        self.order = coefficients.shape[0] - 1
        self.value_finite = torch.isfinite(coefficients[:1])
        self.tried: list[int] = []
        log2 = _log2_magnitude(coefficients)
        score = torch.where(torch.isfinite(log2), log2.abs(), math.inf)
        score = torch.where(score <= w, 0.0, score)  # radius 1 wins wherever it is inside
        self.best = _Best(
            result=result,
            score=score,
            log2=log2,
            s=torch.zeros_like(log2),
            zero=coefficients == 0,
            bad=~torch.isfinite(coefficients),
        )
        self.tried.append(0)

    def _add(self, s: int) -> None:
        coefficients = self.rerun(s)
        self.tried.append(s)
        log2 = _log2_magnitude(coefficients)
        score = torch.where(torch.isfinite(log2), log2.abs(), math.inf)
        # the value does not depend on the radius: keep radius 1's
        score = torch.cat([torch.full_like(score[:1], math.inf), score[1:]])
        best = self.best
        take = score < best.score
        best.result = torch.where(take, to_derivatives(coefficients, s), best.result)
        best.score = torch.where(take, score, best.score)
        best.log2 = torch.where(take, log2, best.log2)
        best.s = torch.where(take, float(s), best.s)
        best.zero = best.zero | (coefficients == 0)
        best.bad = best.bad | ~torch.isfinite(coefficients)

    def run(self) -> Tensor:
        for _ in range(ROUNDS):
            radii = [s for s in self._plan() if s not in self.tried]
            radii = radii[: MAX_RUNS - len(self.tried)]
            if not radii:
                break
            for s in radii:
                self._add(s)
        _warn_range(self.api, self.best.result, None, self.value_finite, self.read, self.best)
        if may_record(self.best.result):
            self._warn_gradient()
        return self.best.result

    def _warn_gradient(self) -> None:
        """Warn where a gradient through this result would underflow: an order taken from a radius
        whose factor ``k!/r^k`` is no normal float64 (the value is right, but backward multiplies
        the gradient by that factor, which rounds to 0 or inf)."""
        order = self.order
        lf = [log2_factorial(k) for k in range(order + 1)]
        radii = _per_order(self.best.s, "amax"), _per_order(self.best.s, "amin")
        orders = [
            k
            for k in range(max(self.read, 1), order + 1)
            if any(
                not _GRADIENT_LOW <= lf[k] - k * s <= _GRADIENT_HIGH
                for s in (radii[0][k], radii[1][k])
                if s
            )
        ]
        if not orders:
            return
        text = message(
            self.api,
            "a derivative rescaled to stay in range is right, but its gradient with respect to "
            "the weights underflows, since the factor k!/r^k it is multiplied by is outside "
            "float64",
            f"order(s) {_ranges(orders)}",
            "Rescale the argument or the function so that the derivatives are nearer 1 (for "
            "f(a x), d^k/dx^k = a^k f^(k)(a x)), or do not train on these orders.",
        )
        warning = RangeWarning(text, imprecise=tuple(orders))
        warnings.warn(warning, stacklevel=user_stacklevel())

    def _plan(self) -> list[int]:
        """The radii (``log2``) the magnitudes seen so far call for."""
        best, w, order = self.best, self.w, self.order
        ks = torch.arange(order + 1, dtype=torch.float64, device=best.s.device)
        ks = ks.reshape(-1, *([1] * (best.s.dim() - 1)))
        known = torch.isfinite(best.score) & self.value_finite
        needy = known & (best.score > w)
        m = torch.where(known, best.log2 - ks * best.s, math.nan)  # log2 |c_k| at radius 1
        m_low = _per_order(torch.where(needy, m, math.inf), "amin")
        m_high = _per_order(torch.where(needy, m, -math.inf), "amax")
        seen = _per_order(torch.where(known, m, -math.inf), "amax")
        # never finite and nonzero: zero somewhere (underflow, if the last order seen before it
        # is below the band) or non-finite everywhere (overflow)
        unseen = ~torch.isfinite(best.score) & self.value_finite
        zero_only = unseen & best.zero & ~best.bad
        low = needy & (best.log2 < 0)
        index = torch.arange(order + 1, device=best.s.device).reshape(ks.shape).expand(m.shape)
        last = torch.where(zero_only, -1, index).cummax(0).values
        under = zero_only & (last >= 0) & low.gather(0, last.clamp(min=0))
        under_any = _per_order(under, "any")
        over_any = _per_order(unseen & best.bad & ~best.zero, "any")

        intervals: list[tuple[float, float]] = []
        last_seen: int | None = None
        for k in range(1, order + 1):
            if math.isfinite(m_low[k]):
                low_m, high_m = m_low[k], m_high[k]
                if high_m - low_m <= 2 * w:
                    intervals.append(((-w - low_m) / k, (w - high_m) / k))
                else:  # entries too far apart for one radius: one for each end
                    intervals.append(((-w - low_m) / k, (w - low_m) / k))
                    intervals.append(((-w - high_m) / k, (w - high_m) / k))
            if under_any[k] or over_any[k]:
                interval = self._explore(k, last_seen, seen, bool(under_any[k]))
                if interval is not None:
                    intervals.append(interval)
            if math.isfinite(seen[k]):
                last_seen = k
        bound = 2 * w  # radii 2^+-2W scale a direction of magnitude 1 to normal numbers
        return [s for s in _stab(intervals, self.tried) if -bound <= s <= bound]

    def _explore(
        self, k: int, last_seen: int | None, seen: list[float], under: bool
    ) -> tuple[float, float] | None:
        """An interval of ``s`` for order ``k``, not seen yet: its magnitude extrapolated from the
        highest order seen below it (with the growth between the two orders seen last), aimed at
        the band's upper half when it underflowed (the orders after it are smaller still) and at
        its lower half when it overflowed; beyond every radius tried."""
        w = self.w
        if last_seen is None:
            if min(self.tried) <= -w:
                return None  # non-finite down to radius 2^-W: a singularity, not an overflow
            target = float(min(self.tried) - max(1, w // k))
        else:
            j = last_seen
            growth = 0.0
            if j >= 2 and math.isfinite(seen[j - 1]):
                growth = seen[j] - seen[j - 1]
            estimate = seen[j] + (k - j) * growth
            target = ((w / 2 if under else -w / 2) - estimate) / k
        beyond = max(self.tried) + 1.0 if under else min(self.tried) - 1.0
        target = max(target, beyond) if under else min(target, beyond)
        half = w / (2 * k)
        return target - half, target + half


def _stab(intervals: list[tuple[float, float]], tried: list[int]) -> list[int]:
    """Integer points hitting every interval (greedy by right end; a tried point counts), the new
    ones only, in the order chosen."""
    points = list(tried)
    new: list[int] = []
    for a, b in sorted(intervals, key=lambda ab: ab[1]):
        if any(a <= p <= b for p in points):
            continue
        p = math.floor(b)
        if p < a:  # narrower than 1 and no integer inside: the nearest to its middle
            p = round((a + b) / 2)
        if p not in points:
            points.append(p)
            new.append(p)
    return new


def _ranges(orders: list[int]) -> str:
    """``[3, 4, 5, 9]`` as ``"3-5, 9"``."""
    parts: list[str] = []
    start = prev = orders[0]
    for k in [*orders[1:], None]:
        if k is not None and k == prev + 1:
            prev = k
            continue
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
        if k is not None:
            start = prev = k
    return ", ".join(parts)


def _warn_range(
    api: str,
    result: Tensor,
    coefficients: Tensor | None,
    value_finite: Tensor,
    read: int,
    best: _Best | None = None,
) -> None:
    """Warn about derivatives outside the dtype's range: ``inf`` where the coefficient was
    finite, ``0`` where it was nonzero (a subnormal result is representable: no warning), or a
    normal result computed from a subnormal coefficient (imprecise). ``coefficients``: those at
    radius 1 (the hot path), else ``best``; only orders from ``read`` on."""
    dtype = result.dtype
    info = torch.finfo(dtype)
    order = result.shape[0] - 1
    ks = torch.arange(order + 1, dtype=torch.float64, device=result.device)
    ks = ks.reshape(-1, *([1] * (result.dim() - 1)))
    if best is None:
        assert coefficients is not None
        log2 = _log2_magnitude(coefficients)
        s = torch.zeros_like(log2)
    else:
        log2, s = best.log2, best.s
    lf = torch.tensor(
        [log2_factorial(k) for k in range(order + 1)], dtype=torch.float64, device=result.device
    ).reshape(ks.shape)
    exponent = log2 + lf - ks * s  # log2 |d_k|
    usable = torch.isfinite(log2) & value_finite
    usable = torch.cat([torch.zeros_like(usable[:read]), usable[read:]])
    got = result.detach()
    over = usable & ~torch.isfinite(got)
    under = usable & (got == 0)
    imprecise = usable & (got.abs() >= info.tiny) & (log2 < math.log2(info.tiny))
    over_any = _per_order(over, "any")
    under_any = _per_order(under, "any")
    imprecise_any = _per_order(imprecise, "any")
    if not any(over_any) and not any(under_any) and not any(imprecise_any):
        return
    high = _per_order(torch.where(over, exponent, -math.inf), "amax")
    low = _per_order(torch.where(under, exponent, math.inf), "amin")
    name = str(dtype).removeprefix("torch.")
    parts: list[str] = []
    over_orders = [k for k in range(order + 1) if over_any[k]]
    under_orders = [k for k in range(order + 1) if under_any[k]]
    imprecise_orders = [k for k in range(order + 1) if imprecise_any[k]]
    if over_orders:
        top = max(high[k] for k in over_orders) * math.log10(2)
        parts.append(
            f"order(s) {_ranges(over_orders)} overflow to inf (magnitude up to 1e{top:.0f}; "
            f"{name} holds up to {info.max:.1e})"
        )
    if under_orders:
        bottom = min(low[k] for k in under_orders) * math.log10(2)
        parts.append(
            f"order(s) {_ranges(under_orders)} underflow to 0 (magnitude down to "
            f"1e{bottom:.0f}; {name} holds down to {info.tiny:.1e})"
        )
    if imprecise_orders:
        parts.append(f"order(s) {_ranges(imprecise_orders)} lost precision")
    fix = (
        "Compute in float64 (a float64 argument and function)."
        if dtype != torch.float64
        else "float64 is the widest dtype: rescale the argument (d^k/dx^k f(a x) = a^k f^(k)(a x)) "
        "or the function so the derivatives fit."
    )
    text = message(
        api, f"a derivative outside the range of {name} cannot be returned", "; ".join(parts), fix
    )
    warning = RangeWarning(
        text,
        overflow=tuple(over_orders),
        underflow=tuple(under_orders),
        imprecise=tuple(imprecise_orders),
    )
    warnings.warn(warning, stacklevel=user_stacklevel())


_OWN = (str(Path(__file__).resolve().parents[1]), str(Path(torch.__file__).resolve().parent))


def user_stacklevel() -> int:
    """The ``stacklevel`` that points a warning issued by the caller at the first frame outside
    hodfunc and torch: the user's call."""
    level = 1
    frame = sys._getframe(1)  # the caller's, which calls warnings.warn: stacklevel 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_OWN):
        frame = frame.f_back
        level += 1
    return level


def check_partials(api: str, names: list[str], values: Tensor, coefficients: Tensor) -> None:
    """Warn where a partial read off a multivariate jet left the dtype's range: ``values`` holds
    one row per name (``a!`` times its coefficient), ``coefficients`` the same rows' coefficients
    ``d^a f / a!`` with the value row first. Flagged: ``inf`` or ``nan`` where the function's
    value is finite, and coefficients that underflowed (subnormal). One host sync."""
    if not _inspectable(coefficients):
        return
    info = torch.finfo(values.dtype)
    with outside_functorch():
        got = physical(values)
        c = physical(coefficients)
        # the hot path: one reduction and one host sync. tiny / c is above 1 exactly where
        # 0 < |c| < tiny (zeros and infinities give 0); an inf or nan in ``got`` makes it nan
        band = c.new_tensor(info.tiny)
        small = torch.div(band, c[1:]).abs_().nan_to_num_(posinf=0.0).amax()
        if float(small + got.sum() * 0) <= 1:
            return
        value_finite = torch.isfinite(c[:1])
        over = ~torch.isfinite(got) & value_finite
        under = (c[1:] != 0) & (c[1:].abs() < info.tiny)
        per_row = (over | under).any(1)
        if not bool(per_row.any()):
            return
        which = [name for name, hit in zip(names, per_row.tolist(), strict=True) if hit]
        overflow = bool(over.any())
    name = str(values.dtype).removeprefix("torch.")
    rule = (
        f"a partial derivative is outside {name}'s range, so it comes back as inf or nan"
        if overflow
        else f"a partial derivative underflowed {name}'s range, so it comes back as 0 or "
        "with few digits"
    )
    warnings.warn(
        message(
            api,
            rule,
            f"terms {', '.join(which)}",
            "Compute in float64, or rescale the coordinates so that the derivatives are of "
            "moderate size.",
        ),
        RangeWarning,
        stacklevel=user_stacklevel(),
    )
