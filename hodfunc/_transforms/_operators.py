"""Linear differential operators: ``differential_operator`` (any ``sum_a c_a D^a f``),
``divergence``, ``bilaplacian`` and the weighted and stochastic forms of ``laplacian`` (whose
public function lives in ``_derivative``; its weighted and random paths are here).

Every operator is one propagation. An operator of order <= 2 runs in the quadratic-form collapsed
algebra (``_taylor._operators.Quadratic``: the value, ``sum_kl G_kl d^2 f[v_k, v_l]`` and the
first orders along ``v_k``, through the engine primitive ``collapsed``); higher ones read the rows
of one multivariate jet (``partials``) or, for the bilaplacian, sum fourth-order directional jets.
Random directions are drawn outside every ``torch.func`` transform from the caller's
``torch.Generator`` (a private one seeded from the OS without it), once per call: all points of a
``vmap`` share them.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import Literal, ParamSpec, get_args

import numpy as np
import torch
from torch import Tensor

from .._call import Call
from .._errors import ArgumentError, ArgumentTypeError, ShapeError, message
from .._functorch import may_record, outside_functorch, tracing, transformed
from .._nested import basis
from .._validate import (
    check_argnums,
    check_callable,
    check_output,
    check_wrt,
    check_wrt_range,
    warn_precision,
)
from ._engines import entry, resolve
from ._method import Engine, Method

__all__ = [
    "Distribution",
    "Estimator",
    "bilaplacian",
    "check_laplacian_options",
    "differential_operator",
    "divergence",
    "weighted_laplacian",
]

P = ParamSpec("P")

Estimator = Literal["exact", "hutchinson", "stde"]
"""``"exact"``: every direction the operator needs. ``"hutchinson"``: ``samples`` random dense
directions (Rademacher or Gaussian), unbiased. ``"stde"``: ``samples`` random coordinates drawn
without replacement and rescaled (sparse STDE, Shi et al. 2024), unbiased; for very high
dimension, where even one dense direction per sample through the first layer is the cost."""

Distribution = Literal["rademacher", "normal"]
"""Hutchinson's directions: independent signs (the lower variance for a Laplacian) or standard
normal entries."""

Coefficient = float | int | Tensor
"""A term's coefficient: a number, or a tensor broadcast against ``f``'s output (batched under
``vmap`` when built inside the mapped function, differentiable with ``torch.func.grad``)."""


# ----------------------------------------------------------------------------------------------
# validation


def _check_choice(api: str, name: str, value: object, choices: tuple[str, ...], fix: str) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ArgumentError(
            message(api, f"{name} must be one of {list(choices)}", repr(value), fix)
        )


def _check_estimator(
    api: str,
    estimator: object,
    samples: object,
    distribution: object,
    supported: tuple[str, ...],
) -> int | None:
    """``samples`` checked against ``estimator``; ``None`` for the exact operator."""
    _check_choice(
        api, "estimator", estimator, get_args(Estimator), 'Use estimator="exact" (the default).'
    )
    if estimator not in supported:
        raise ArgumentError(
            message(
                api,
                f"this operator supports the estimators {list(supported)}",
                f"estimator={estimator!r}",
                f'Use one of {list(supported)}, or estimator="exact".',
            )
        )
    _check_choice(
        api,
        "distribution",
        distribution,
        get_args(Distribution),
        'Use distribution="rademacher" (lower variance) or "normal".',
    )
    if estimator == "exact":
        if samples is not None:
            raise ArgumentError(
                message(
                    api,
                    'samples= applies to a random estimator, and estimator="exact" draws nothing',
                    f"samples={samples!r}",
                    'Drop samples=, or pass estimator="hutchinson" or "stde".',
                )
            )
        return None
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ArgumentError(
            message(
                api,
                f"estimator={estimator!r} needs samples, an int >= 1 (the number of random "
                "directions or coordinates per call)",
                f"samples={samples!r}",
                "Pass e.g. samples=16; the error shrinks as 1/sqrt(samples).",
            )
        )
    return samples


def _check_generator(api: str, generator: object) -> torch.Generator | None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ArgumentTypeError(
            message(
                api,
                "generator must be a torch.Generator",
                type(generator).__name__,
                "Pass torch.Generator().manual_seed(0) for reproducible draws.",
            )
        )
    return generator


def _check_tensor(api: str, name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor) or not value.is_floating_point():
        raise ArgumentTypeError(
            message(
                api,
                f"{name} must be a floating-point torch.Tensor",
                type(value).__name__ if not isinstance(value, Tensor) else value.dtype,
                f"Pass {name} as a float tensor, e.g. torch.eye(d).",
            )
        )
    return value


# ----------------------------------------------------------------------------------------------
# random draws


def _generator(generator: torch.Generator | None) -> torch.Generator:
    """The caller's generator, or a private one seeded from the OS: the global RNG is never
    touched."""
    return (
        generator if generator is not None else torch.Generator().manual_seed(secrets.randbits(63))
    )


def _draw(
    generator: torch.Generator, shape: tuple[int, ...], distribution: str, like: Tensor
) -> Tensor:
    """``shape`` entries of ``distribution`` on ``like``'s device and dtype, drawn outside every
    functorch transform (so ``vmap``'s randomness rules do not apply: every point shares them)."""
    with outside_functorch():
        device = generator.device
        if distribution == "normal":
            z = torch.randn(shape, generator=generator, device=device, dtype=torch.float64)
        else:
            bits = torch.randint(0, 2, shape, generator=generator, device=device)
            z = bits.to(torch.float64) * 2 - 1
        return z.to(device=like.device, dtype=like.dtype)


def _subset(generator: torch.Generator, d: int, s: int, device: torch.device) -> Tensor:
    """``s`` distinct indices in ``range(d)``, uniformly."""
    with outside_functorch():
        perm = torch.randperm(d, generator=generator, device=generator.device)
        return perm[:s].to(device)


def _units(x: Tensor, index: Tensor) -> Tensor:
    """The basis vectors ``e_i`` for ``i`` in ``index``, shaped ``(len(index), *x.shape)``."""
    with outside_functorch():
        e = torch.zeros(index.shape[0], x.numel(), dtype=x.dtype, device=x.device)
        e[torch.arange(index.shape[0], device=x.device), index] = 1
        return e.reshape(index.shape[0], *x.shape)


def _as_directions(rows: Tensor, x: Tensor) -> Tensor:
    """``(n, d)`` rows as directions shaped like ``x``."""
    return rows.reshape(rows.shape[0], *x.shape).to(x.dtype)


# ----------------------------------------------------------------------------------------------
# the weighted and stochastic Laplacian (public function: _derivative.laplacian)


def _check_weights(
    api: str, weights: Tensor, factor: bool, signs: Tensor | None, x: Tensor
) -> None:
    d = x.numel()
    if weights.dim() != 2 or weights.shape[0] != d or (not factor and weights.shape[1] != d):
        rule = (
            f"weights=S with factor=True must have shape (d, r) = ({d}, r), d = x.numel()"
            if factor
            else f"weights=C must have shape (d, d) = ({d}, {d}), d = x.numel()"
        )
        fix = (
            "Pass C as a (d, d) matrix, or its factor S with C = S S^T as weights=S, factor=True."
            if not factor
            else "Pass S with one row per coordinate of x (C = S S^T), or C itself with "
            "factor=False."
        )
        raise ShapeError(message(api, rule, f"shape {tuple(weights.shape)}", fix))
    if signs is not None and (signs.dim() != 1 or signs.shape[0] != weights.shape[1]):
        raise ShapeError(
            message(
                api,
                f"signs must have one entry per column of S, shape ({weights.shape[1]},)",
                f"shape {tuple(signs.shape)}",
                "Pass signs with C = S diag(signs) S^T, e.g. torch.tensor([1.0, -1.0]).",
            )
        )


def check_laplacian_options(
    api: str,
    weights: object,
    factor: object,
    signs: object,
    estimator: object,
    samples: object,
    distribution: object,
    generator: object,
) -> int | None:
    """``laplacian``'s options, checked when the transform is built; returns ``samples``."""
    if weights is not None:
        _check_tensor(api, "weights", weights)
    if not isinstance(factor, bool):
        raise ArgumentTypeError(message(api, "factor must be a bool", repr(factor)))
    if signs is not None:
        _check_tensor(api, "signs", signs)
        if weights is None or not factor:
            raise ArgumentError(
                message(
                    api,
                    "signs= weights the columns of a factor, C = S diag(signs) S^T",
                    "signs without weights=S, factor=True",
                    "Pass weights=S, factor=True with it, or an indefinite C itself "
                    "(factor=False).",
                )
            )
    _check_generator(api, generator)
    supported = ("exact", "hutchinson", "stde")
    count = _check_estimator(api, estimator, samples, distribution, supported)
    if estimator == "stde" and isinstance(weights, Tensor) and not factor and count == 1:
        raise ArgumentError(
            message(
                api,
                'estimator="stde" with a full C draws coordinate pairs for its off-diagonal '
                "entries, so it needs samples >= 2",
                "samples=1",
                "Pass samples >= 2.",
            )
        )
    return count


def weighted_laplacian(
    engine: Engine,
    call: Call,
    weights: Tensor | None,
    factor: bool,
    signs: Tensor | None,
    estimator: Estimator,
    samples: int | None,
    distribution: Distribution,
    generator: torch.Generator | None,
) -> Tensor:
    """``tr(C Hess f)`` by ``estimator`` (``C = I`` for ``weights=None``), one collapsed
    propagation."""
    api, x = call.api, call.x
    d = x.numel()
    if weights is not None:
        _check_weights(api, weights, factor, signs, x)
    if estimator == "exact":
        if weights is None:
            return engine.laplacian(call)
        if factor:  # r directions, the columns of S
            return engine.collapsed(call, _as_directions(weights.T, x), signs, first=False)[1]
        sym = (weights + weights.T) / 2
        if may_record(sym) or transformed(sym) or tracing():  # the quadratic form: C may be
            # differentiated, or (traced) its eigendecomposition would be data-dependent
            return engine.collapsed(call, basis(x), sym.to(x.dtype), first=False)[1]
        directions, counts = signed_factor(sym, x)  # rank(C) signed directions
        if not directions.shape[0]:  # C = 0
            return engine.collapsed(call, basis(x), sym.to(x.dtype), first=False)[1]
        return engine.collapsed(call, directions, counts, first=False)[1]
    assert samples is not None
    gen = _generator(generator)
    if estimator == "hutchinson":
        if weights is None:
            z = _draw(gen, (samples, d), distribution, x)
            return engine.collapsed(call, _as_directions(z, x), None, first=False)[1] / samples
        if factor:
            z = _draw(gen, (samples, weights.shape[1]), distribution, x)
            if signs is None:  # v = S z: E[v v^T] = S S^T
                v = z @ weights.T.to(x.dtype)
                return engine.collapsed(call, _as_directions(v, x), None, first=False)[1] / samples
            root = signs.abs().sqrt().to(x.dtype)
            v, form = _signed_columns(z, root, weights, signs, x)
            return engine.collapsed(call, _as_directions(v, x), form, first=False)[1] / samples
        # full C: (C z)^T H z = p^T H p - m^T H m, p = (C z + z) / 2, m = (C z - z) / 2
        z = _draw(gen, (samples, d), distribution, x)
        cz = z @ weights.T.to(x.dtype)
        v = torch.cat([(cz + z) / 2, (cz - z) / 2])
        form = torch.cat([x.new_ones(samples), -x.new_ones(samples)])
        return engine.collapsed(call, _as_directions(v, x), form, first=False)[1] / samples
    # stde: coordinates (or columns of S) without replacement, rescaled
    if weights is None:
        index = _subset(gen, d, min(samples, d), x.device)
        scale = d / index.shape[0]
        return engine.collapsed(call, _units(x, index), None, first=False)[1] * scale
    if factor:
        r = weights.shape[1]
        index = _subset(gen, r, min(samples, r), x.device)
        columns = weights.T.index_select(0, index)
        picked = None if signs is None else signs.index_select(0, index)
        return engine.collapsed(call, _as_directions(columns, x), picked, first=False)[1] * (
            r / index.shape[0]
        )
    s = min(samples, d)
    index = _subset(gen, d, s, x.device)
    block = weights.index_select(0, index).index_select(1, index)
    block = (block + block.T) / 2
    off = d * (d - 1) / (s * (s - 1))
    rescale = torch.full((s, s), off, dtype=x.dtype, device=x.device)
    rescale.fill_diagonal_(d / s)
    return engine.collapsed(call, _units(x, index), (block * rescale).to(x.dtype), first=False)[1]


def signed_factor(sym: Tensor, x: Tensor) -> tuple[Tensor, tuple[int, int, int]]:
    """Directions ``V`` and counts ``(plus, minus, 0)`` with ``sym = V+^T V+ - V-^T V-``: the
    eigenvectors of the symmetric ``sym`` scaled by ``sqrt|lambda|``, the positive eigenvalues
    first; eigenvalues below ``d * eps * max|lambda|`` (float64) are dropped, so a ``C`` of rank
    ``r`` costs ``r`` directions. In float64, exact to rounding."""
    d = sym.shape[0]
    with outside_functorch():
        lam, q = torch.linalg.eigh(sym.detach().to(torch.float64))
        cut = d * torch.finfo(torch.float64).eps * float(lam.abs().max())
        plus, minus = lam > cut, lam < -cut
        rows = torch.cat([q[:, plus] * lam[plus].sqrt(), q[:, minus] * (-lam[minus]).sqrt()], 1)
        directions = rows.T.to(x.dtype).reshape(rows.shape[1], *x.shape)
    return directions, (int(plus.sum()), int(minus.sum()), 0)


def _signed_columns(
    z: Tensor, root: Tensor, weights: Tensor, signs: Tensor, x: Tensor
) -> tuple[Tensor, Tensor]:
    """Hutchinson for ``C = S diag(signs) S^T = S+ S+^T - S- S-^T``: one batch of directions
    per part (``S+ z+`` and ``S- z-``, the columns with positive and with negative signs), with
    the form ``+1`` on the first, ``-1`` on the second."""
    s = z.shape[0]
    w = weights.T.to(x.dtype)
    plus = (signs > 0).to(x.dtype) * root
    minus = (signs < 0).to(x.dtype) * root
    v = torch.cat([(z * plus) @ w, (z * minus) @ w])
    form = torch.cat([x.new_ones(s), -x.new_ones(s)])
    return v, form


# ----------------------------------------------------------------------------------------------
# differential_operator


def _check_coefficient(api: str, key: tuple[int, ...], c: object) -> Coefficient:
    if isinstance(c, bool) or not isinstance(c, (int, float, Tensor)):
        raise ArgumentTypeError(
            message(
                api,
                "every coefficient in terms must be a number or a tensor",
                f"{c!r} for the term {key}",
                "Write terms={(0, 0): 1.0, (1,): c} with numbers or tensors as values.",
            )
        )
    if isinstance(c, Tensor) and not c.is_floating_point():
        raise ArgumentTypeError(
            message(
                api,
                "a tensor coefficient must have a floating dtype",
                f"{c.dtype} for the term {key}",
                "Convert it, e.g. c.double().",
            )
        )
    return c


def check_terms(api: str, terms: object) -> dict[tuple[int, ...], list[Coefficient]]:
    """``terms`` as ``{sorted wrt: [coefficients]}`` (partials commute: ``(0, 1)`` and ``(1, 0)``
    are one term)."""
    fix = "Pass a mapping from wrt tuples to coefficients, e.g. {(0, 0): 1.0, (1, 1): 1.0}."
    if not isinstance(terms, Mapping):
        raise ArgumentTypeError(
            message(
                api, "terms must be a mapping from wrt tuples to coefficients", repr(terms), fix
            )
        )
    if not terms:
        raise ArgumentError(message(api, "terms must name at least one term", repr(terms), fix))
    out: dict[tuple[int, ...], list[Coefficient]] = {}
    for key, c in terms.items():
        wrt = tuple(sorted(check_wrt(api, key)))
        out.setdefault(wrt, []).append(_check_coefficient(api, wrt, c))
    return out


def _total(cs: list[Coefficient]) -> Coefficient:
    total: Coefficient = cs[0]
    for c in cs[1:]:
        total = total + c
    return total


def _scalar(c: Coefficient) -> bool:
    return not isinstance(c, Tensor) or c.dim() == 0


def _as_tensor(c: Coefficient, like: Tensor) -> Tensor:
    return c.to(like.dtype) if isinstance(c, Tensor) else torch.tensor(c, dtype=like.dtype)


@functools.cache
def _numeric_plan(
    terms: tuple[tuple[tuple[int, ...], float], ...],
) -> tuple[tuple[int, ...], tuple[tuple[float, ...], ...], int, int, tuple[float, ...]]:
    """``(variables, rows, plus, minus, b)`` for numeric terms of order <= 2: ``C = sum_k
    sigma_k r_k r_k^T`` over the named variables (``rows`` ``r_k``, the first ``plus`` with
    ``sigma = +1``, the next ``minus`` with ``-1``; ``sqrt|c_i| e_i`` for a diagonal ``C``, the
    scaled eigenvectors otherwise, eigenvalues below ``m * eps * max|lambda|`` dropped) and the
    drift ``b``. Plain numbers and NumPy only: nothing here is traced or data-dependent."""
    variables = tuple(sorted({i for wrt, _ in terms for i in wrt}))
    where = {v: k for k, v in enumerate(variables)}
    m = len(variables)
    c = np.zeros((m, m))
    b = np.zeros(m)
    for wrt, value in terms:
        if len(wrt) == 2:
            c[where[wrt[0]], where[wrt[1]]] += value / 2
            c[where[wrt[1]], where[wrt[0]]] += value / 2
        elif len(wrt) == 1:
            b[where[wrt[0]]] += value
    if not np.any(c - np.diag(np.diag(c))):
        w = np.diag(c)
        order = [k for k in range(m) if w[k] > 0] + [k for k in range(m) if w[k] < 0]
        rows = np.zeros((len(order), m))
        rows[np.arange(len(order)), order] = np.sqrt(np.abs(w[order]))
        plus = int((w > 0).sum())
        minus = len(order) - plus
    else:
        lam, q = np.linalg.eigh(c)
        cut = m * np.finfo(np.float64).eps * np.abs(lam).max()
        pos, neg = lam > cut, lam < -cut
        rows = np.concatenate(
            [(q[:, pos] * np.sqrt(lam[pos])).T, (q[:, neg] * np.sqrt(-lam[neg])).T]
        )
        plus, minus = int(pos.sum()), int(neg.sum())
    return (
        variables,
        tuple(tuple(float(v) for v in r) for r in rows),
        plus,
        minus,
        tuple(float(v) for v in b),
    )


def _numeric_rows(engine: Engine, call: Call, terms: dict[tuple[int, ...], Coefficient]) -> Tensor:
    """An operator of order <= 2 whose first- and second-order coefficients are numbers, in one
    collapsed propagation as cheap as the Laplacian's: the second-order part ``tr(C H)`` as
    ``rank(C)`` signed directions (``_numeric_plan``) and the first-order part ``sum_i b_i d_i
    f`` as one more direction ``b`` whose first order is read and whose second order is not
    summed."""
    x = call.x
    numbers = tuple((w, float(c)) for w, c in terms.items() if w)
    variables, rows, plus, minus, b = _numeric_plan(numbers)
    free = int(any(b))
    seeds = [*rows, b] if free else list(rows)
    if not seeds:  # every coefficient of order >= 1 is zero
        seeds, free = [b], 1
    small = torch.tensor(seeds, dtype=x.dtype, device=x.device)
    index = torch.tensor(variables, device=x.device)
    dense = small.new_zeros(small.shape[0], x.numel()).index_copy(1, index, small)
    directions = dense.reshape(small.shape[0], *x.shape)
    rows_out = engine.collapsed(call, directions, (plus, minus, free), first=bool(free))
    result = rows_out[1]
    if free:
        result = result + rows_out[2 + plus + minus]
    for wrt, value in terms.items():
        if not wrt:
            result = result + value * rows_out[0]
    return result


def _operator_rows(engine: Engine, call: Call, terms: dict[tuple[int, ...], Coefficient]) -> Tensor:
    """An operator of order <= 2 with scalar coefficients in one collapsed propagation: the
    directions are the unit vectors of the coordinates the terms name, the form ``G`` holds the
    second-order coefficients (diagonal when no term is mixed), and the first orders of the
    unit directions give the first-order terms."""
    x = call.x
    variables = sorted({i for wrt in terms for i in wrt})
    where = {v: k for k, v in enumerate(variables)}
    m = len(variables)
    mixed = any(len(w) == 2 and w[0] != w[1] for w in terms)
    zero = x.new_zeros(())
    if mixed:
        entries = [[zero] * m for _ in range(m)]
        for wrt, c in terms.items():
            if len(wrt) == 2:
                i, j = where[wrt[0]], where[wrt[1]]
                value = _as_tensor(c, x)
                if i == j:
                    entries[i][i] = entries[i][i] + value
                else:
                    entries[i][j] = entries[i][j] + value / 2
                    entries[j][i] = entries[j][i] + value / 2
        form = torch.stack([torch.stack(row) for row in entries])
    else:
        diagonal = [zero] * m
        for wrt, c in terms.items():
            if len(wrt) == 2:
                diagonal[where[wrt[0]]] = diagonal[where[wrt[0]]] + _as_tensor(c, x)
        form = torch.stack(diagonal)
    first = any(len(w) == 1 for w in terms)
    index = torch.tensor(variables, device=x.device)
    rows = engine.collapsed(call, _units(x, index), form, first=first)
    result = rows[1]
    for wrt, c in terms.items():
        if len(wrt) == 0:
            result = result + c * rows[0]
        elif len(wrt) == 1:
            result = result + c * rows[2 + where[wrt[0]]]
    return result


def differential_operator(
    f: Callable[P, Tensor],
    terms: Mapping[tuple[int, ...], Coefficient],
    *,
    argnums: int = 0,
    method: Method = "auto",
) -> Callable[P, Tensor]:
    """The linear differential operator ``sum_a c_a D^a f`` at one point.

    ``terms`` maps ``wrt`` tuples (flat indices into the argument, as ``partial`` takes them;
    ``()`` is the value) to coefficients, numbers or tensors that broadcast against ``f``'s
    output. A tensor coefficient may depend on the point (build the transform inside the mapped
    function) or require grad (``torch.func.grad`` over it); keys that differ only in order,
    ``(0, 1)`` and ``(1, 0)``, are one term.

    One propagation computes every term. An operator of order <= 2 whose coefficients are scalars
    (the Fokker-Planck, Black-Scholes, Kolmogorov and HJB operators) runs in the collapsed
    quadratic-form algebra: one direction per coordinate the terms name, the second-order
    coefficients as the form ``G`` of ``sum_kl G_kl d^2 f[e_k, e_l]`` (one multiply per nonlinear
    op when no term is mixed, an ``m x m`` contraction otherwise), the first orders riding along.
    Higher orders, or tensor coefficients of more than one element, read each partial off its
    own row of one multivariate Taylor jet (``hodfunc.partials``) and sum them weighted.

    Args:
        f: the function, of any output shape (the operator acts elementwise).
        terms: ``{wrt: coefficient}``, e.g. ``{(0, 0): 1.0, (1, 1): 1.0, (0,): b}``.
        argnums: the positional argument to differentiate.
        method: ``"auto"``, ``"taylor"`` or ``"nested"`` (every term by its own nest).

    Returns:
        A function with ``f``'s signature returning the operator applied to ``f``.

    Raises:
        ArgumentError: empty ``terms``, a negative index, an index ``>= x.numel()`` (at call
            time), a bad ``method``; ``ArgumentTypeError`` for a coefficient that is not a number
            or tensor.

    Example:
        >>> import torch, hodfunc
        >>> f = lambda x: x[0] ** 3 * x[1] + x[1] ** 2
        >>> L = hodfunc.differential_operator(f, {(0, 0): 1.0, (0, 1): 2.0, (1,): -1.0})
        >>> L(torch.tensor([1.0, 2.0]))  # 6 x0 x1 + 2 (3 x0^2) - (x0^3 + 2 x1)
        tensor(13.)
    """
    api = "hodfunc.differential_operator"
    check_callable(api, f)
    checked = check_terms(api, terms)
    check_argnums(api, argnums)
    engine = resolve(api, method)
    order = max(len(w) for w in checked)
    collapsed = order <= 2 and method != "nested"

    @functools.wraps(f)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> Tensor:
        call = Call.bind(api, f, args, kwargs, argnums)
        for wrt in checked:
            check_wrt_range(api, wrt, call.x)
        warn_precision(api, call.x, order)
        totals = {wrt: _total(cs) for wrt, cs in checked.items()}
        if order == 0:
            return _weighted([check_output(api, call.at(call.x))], list(totals.values()))
        second = [c for w, c in totals.items() if len(w) == 2]
        numeric = not any(isinstance(c, Tensor) for w, c in totals.items() if w)
        if collapsed and numeric:
            return _numeric_rows(engine, call, totals)
        if collapsed and all(_scalar(c) for c in second):
            return _operator_rows(engine, call, totals)
        values = engine.partials(call, tuple(totals))
        return _weighted(list(values), list(totals.values()))

    return entry(method, wrapped)


def _weighted(values: Sequence[Tensor], coefficients: Sequence[Coefficient]) -> Tensor:
    out = coefficients[0] * values[0]
    for c, v in zip(coefficients[1:], values[1:], strict=True):
        out = out + c * v
    return out


# ----------------------------------------------------------------------------------------------
# divergence


def divergence(
    F: Callable[P, Tensor],
    *,
    argnums: int = 0,
    method: Method = "auto",
    estimator: Literal["exact", "hutchinson"] = "exact",
    samples: int | None = None,
    distribution: Distribution = "rademacher",
    generator: torch.Generator | None = None,
) -> Callable[P, Tensor]:
    """The divergence ``sum_i dF_i / dx_i`` of a vector field ``F`` whose output has as many
    elements as its argument (flat index ``i`` on both sides).

    Exact: the ``d`` unit directions' first orders from one propagation (collapsed, no second
    order carried), their diagonal summed. ``estimator="hutchinson"``: ``z^T (J z)`` averaged
    over ``samples`` random directions (unbiased, ``E[z z^T] = I``), for large ``d``.

    Raises:
        ShapeError: ``F``'s output does not have ``x.numel()`` elements.
        ArgumentError: a bad estimator or ``samples`` (an int >= 1 with ``"hutchinson"``).

    Example:
        >>> import torch, hodfunc
        >>> F = lambda x: torch.stack([x[0] ** 2 * x[1], torch.sin(x[1])])
        >>> hodfunc.divergence(F)(torch.tensor([1.0, 0.0]))  # 2 x0 x1 + cos(x1)
        tensor(1.)
    """
    api = "hodfunc.divergence"
    check_callable(api, F, "F")
    check_argnums(api, argnums)
    engine = resolve(api, method)
    count = _check_estimator(api, estimator, samples, distribution, ("exact", "hutchinson"))
    _check_generator(api, generator)

    @functools.wraps(F)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> Tensor:
        call = Call.bind(api, F, args, kwargs, argnums)
        x = call.x
        d = x.numel()
        if count is None:
            directions = basis(x)
        else:
            directions = _as_directions(
                _draw(_generator(generator), (count, d), distribution, x), x
            )
        n = directions.shape[0]
        form = x.new_zeros(n)
        rows = engine.collapsed(call, directions, form, first=True)[2:]  # (n, *out_shape)
        if rows[0].numel() != d:
            raise ShapeError(
                message(
                    api,
                    "F must map R^d to R^d: its output needs as many elements as its argument",
                    f"an output of shape {tuple(rows.shape[1:])} for an argument of shape "
                    f"{tuple(x.shape)}",
                    "Return one component per coordinate (a vector field), or use "
                    "hodfunc.jacobian for the full Jacobian.",
                )
            )
        flat = rows.reshape(n, d)
        if count is None:
            return flat.diagonal().sum()
        return (flat * directions.reshape(n, d)).sum() / count

    return entry(method, wrapped)


# ----------------------------------------------------------------------------------------------
# bilaplacian


def bilaplacian_directions(x: Tensor, index: Tensor) -> Tensor:
    """The fourth-order directions of the bilaplacian over the coordinates ``index`` (``s`` of
    them): the ``s`` unit vectors ``e_i``, then ``e_i + e_j`` and ``e_i - e_j`` for ``i < j``
    (``s^2`` in all).

    Along ``v``, ``D(v) = d^4/dt^4 f(x + t v)``; by the multinomial theorem
    ``D(e_i + e_j) + D(e_i - e_j) = 2 D(e_i) + 2 D(e_j) + 12 d^4 f / dx_i^2 dx_j^2``: the odd
    mixed partials cancel, so every ``d_i^2 d_j^2 f`` is a combination of these ``D``."""
    s = index.shape[0]
    d = x.numel()
    with outside_functorch():
        eye = torch.zeros(s, d, dtype=x.dtype, device=x.device)
        eye[torch.arange(s, device=x.device), index] = 1
        i, j = torch.triu_indices(s, s, offset=1, device=x.device)
        rows = torch.cat([eye, eye[i] + eye[j], eye[i] - eye[j]])
    return rows.reshape(rows.shape[0], *x.shape)


def _bilaplacian_weights(s: int, diagonal: float, off: float, like: Tensor) -> Tensor:
    """Weights ``w`` with ``sum_v w_v D(v) = diagonal * sum_i d_i^4 f + off * sum_{i != j}
    d_i^2 d_j^2 f`` over the ``s^2`` directions of ``bilaplacian_directions``."""
    pairs = s * (s - 1)  # e_i + e_j and e_i - e_j for i < j
    axis = diagonal - off * (s - 1) / 3
    return torch.cat(
        [
            torch.full((s,), axis, dtype=like.dtype, device=like.device),
            torch.full((pairs,), off / 6, dtype=like.dtype, device=like.device),
        ]
    )


def bilaplacian(
    f: Callable[P, Tensor],
    *,
    argnums: int = 0,
    method: Method = "auto",
    estimator: Estimator = "exact",
    samples: int | None = None,
    distribution: Literal["normal"] = "normal",
    generator: torch.Generator | None = None,
) -> Callable[P, Tensor]:
    """The bilaplacian (biharmonic operator) ``Delta^2 f = sum_ij d^4 f / dx_i^2 dx_j^2``.

    Exact: the collapsed Laplacian of the collapsed Laplacian. The inner ``laplacian`` is a
    program of ATen ops like any other (value, summed second order and ``d`` first orders per
    intermediate), so the outer collapsed Taylor propagation runs through it: ``(d + 2)^2``
    coefficient rows per intermediate, 144 at ``d = 10`` (the outer one in the ``Quadratic``
    algebra, whose product of two jets broadcasts the value rows instead of gathering pairs:
    the inner program multiplies jets at every activation), against ``d^2`` directions of five
    rows each (500) for the interpolation of fourth-order directional jets, ``D(e_i + e_j) +
    D(e_i - e_j) - 2 D(e_i) - 2 D(e_j) = 12 d_i^2 d_j^2 f`` (``D(v) = d^4/dt^4 f(x + t v)``; the
    stochastic estimators use it), and ``d^2`` nests of depth 4 for a nested Laplacian of a
    Laplacian.

    ``estimator="hutchinson"``: ``D(z) / 3`` averaged over ``samples`` Gaussian directions
    (``E[z_i z_j z_k z_l]`` pairs the indices, three ways: unbiased; Rademacher directions would
    weight ``d_i^4 f`` by 1 instead of 3, so they are refused). ``estimator="stde"``: the exact
    operator on ``s = samples >= 2`` random coordinates (``s^2`` directions), its diagonal terms
    rescaled by ``d / s`` and its off-diagonal ones by ``d (d - 1) / (s (s - 1))``: unbiased.

    Raises:
        ArgumentError: a bad estimator, ``samples``, ``distribution`` other than ``"normal"``,
            or ``samples < 2`` with ``"stde"``.

    Example:
        >>> import torch, hodfunc
        >>> f = lambda x: (x**2).sum() ** 2  # |x|^4: Delta^2 = 8 d (d + 2)
        >>> hodfunc.bilaplacian(f)(torch.tensor([1.0, 2.0, 3.0]))
        tensor(120.)
    """
    api = "hodfunc.bilaplacian"
    check_callable(api, f)
    check_argnums(api, argnums)
    engine = resolve(api, method)
    if distribution != "normal":
        raise ArgumentError(
            message(
                api,
                "the randomized bilaplacian needs Gaussian directions (E[D(z)] = 3 Delta^2 f "
                "holds for them; Rademacher directions weight d^4 f / dx_i^4 by 1, not 3)",
                f"distribution={distribution!r}",
                'Use distribution="normal" (the default), or estimator="stde".',
            )
        )
    count = _check_estimator(api, estimator, samples, "normal", ("exact", "hutchinson", "stde"))
    if estimator == "stde" and count == 1:
        raise ArgumentError(
            message(
                api,
                'estimator="stde" estimates the mixed terms from coordinate pairs, so it needs '
                "samples >= 2",
                "samples=1",
                "Pass samples >= 2.",
            )
        )
    _check_generator(api, generator)
    from ._derivative import laplacian  # the public transform (it imports this module)

    inner = laplacian(f, argnums=argnums, method=method)

    @functools.wraps(f)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> Tensor:
        call = Call.bind(api, f, args, kwargs, argnums)
        x = call.x
        d = x.numel()
        warn_precision(api, x, 4)
        if estimator == "exact":  # the outer Laplacian in the Quadratic algebra's product
            outer = Call.bind(api, inner, args, kwargs, argnums)
            return engine.collapsed(outer, basis(x), None, first=False)[1]
        if estimator == "hutchinson":
            assert count is not None
            z = _draw(_generator(generator), (count, d), "normal", x)
            directions = _as_directions(z, x)
            weights = x.new_full((count,), 1 / (3 * count))
        else:  # stde: the interpolation on s coordinates, diagonal and mixed terms rescaled
            assert count is not None
            s = min(count, d)
            index = _subset(_generator(generator), d, s, x.device)
            diagonal = d / s
            off = d * (d - 1) / (s * (s - 1)) if s > 1 else 0.0
            directions = bilaplacian_directions(x, index)
            weights = _bilaplacian_weights(index.shape[0], diagonal, off, x)

        def fourth(v: Tensor) -> Tensor:
            return engine.jet(call, v, 4, read=4)[4]

        values: Tensor = torch.func.vmap(fourth)(directions)
        out: Tensor = torch.tensordot(weights.to(values.dtype), values, dims=1)
        return out

    return entry(method, wrapped)
