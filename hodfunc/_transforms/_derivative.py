"""Derivatives of any order: ``derivative``, ``derivatives``, ``partial``, ``partials``,
``directional_derivative``, ``laplacian`` (all dispatched on ``method=``) and ``derivative_tensor``.

Each transform validates its options when it is built and returns a function with the wrapped
function's signature, which composes with ``torch.func.vmap``, ``torch.func.grad`` and the other
transforms.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import ParamSpec, TypeVar, overload

import torch
from torch import Tensor
from torch.func import jacfwd, jacrev
from typing_extensions import TypeVarTuple, Unpack

from .._call import Call, WithDirection, append_parameter, split_direction
from .._errors import ArgumentError, ArgumentTypeError, message
from .._taylor._mixed import closure, exponents
from .._validate import (
    check_argnums,
    check_callable,
    check_order,
    check_same_shape,
    check_scalar_arg,
    check_wrt,
    check_wrt_range,
    warn_per_element,
    warn_precision,
)
from ._engines import entry, resolve
from ._method import Method
from ._operators import (
    Distribution,
    Estimator,
    check_laplacian_options,
    weighted_laplacian,
)

P = ParamSpec("P")
K = TypeVar("K", bound=str)
Ts = TypeVarTuple("Ts")


def _scalar_jet(
    api: str,
    f: Callable[P, Tensor],
    order: int,
    argnums: int,
    method: Method,
    *,
    only_top: bool,
) -> Callable[P, Tensor]:
    """``derivatives`` (all orders ``0..order``, stacked) or, ``only_top``, ``derivative``."""
    check_callable(api, f)
    check_order(api, order)
    check_argnums(api, argnums)
    engine = resolve(api, method)

    @functools.wraps(f)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> Tensor:
        call = Call.bind(api, f, args, kwargs, argnums)
        check_scalar_arg(api, call.x)
        warn_precision(api, call.x, order)
        orders = engine.jet(call, torch.ones_like(call.x), order, read=order if only_top else 1)
        return orders[order] if only_top else orders

    return entry(method, wrapped)


def derivative(
    f: Callable[P, Tensor], order: int = 1, *, argnums: int = 0, method: Method = "auto"
) -> Callable[P, Tensor]:
    """The ``order``-th derivative of ``f`` with respect to a 0-d tensor argument.

    ``derivative(f, k)(x) = d^k f / dx^k``; ``f`` may return any shape, and so does the result.
    ``order=0`` gives the value.

    Args:
        f: function of one or more arguments returning a tensor.
        order: the derivative's order, an int >= 0.
        argnums: which positional argument to differentiate; it must be a 0-d floating tensor.
        method: ``"nested"`` (``torch.func.jvp`` nested ``order`` times), ``"taylor"`` (Taylor
            mode: one pass of truncated Taylor series, O(order^2) per op; raises
            ``UnsupportedOperationError`` for an op without a rule), ``"auto"`` (Taylor mode
            where it applies, else nested with one ``FallbackWarning``) or ``"compiled"``
            (Taylor mode with each propagation compiled by ``torch.compile``, the one method
            that works inside ``torch.compile(fullgraph=True)``; every transform with
            ``method=`` takes it).

    Returns:
        A function with ``f``'s signature returning the derivative.

    In Taylor mode every order up to 1000 is right wherever the dtype can hold it (the jet is
    rescaled where coefficients would under- or overflow); a derivative outside the dtype's range
    comes back as inf or 0 with a ``RangeWarning`` naming the orders (use float64).

    Raises:
        ArgumentError: bad ``order``/``argnums``/``method``, or a non-0-d argument (``ShapeError``);
            ``order`` above 1000, or above 10 for ``method="nested"`` (8 as auto's fallback).

    Example:
        >>> import torch, hodfunc
        >>> d2 = hodfunc.derivative(lambda x: 2 * x**3, order=2)
        >>> d2(torch.tensor(-2.0))
        tensor(-24.)
    """
    return _scalar_jet("hodfunc.derivative", f, order, argnums, method, only_top=True)


def derivatives(
    f: Callable[P, Tensor], order: int, *, argnums: int = 0, method: Method = "auto"
) -> Callable[P, Tensor]:
    """All derivatives of orders ``0..order`` of ``f`` at a 0-d argument, stacked.

    The result has shape ``(order + 1, *out_shape)``; entry ``k`` is ``d^k f / dx^k``. The orders
    share their work: one nest (or one Taylor pass) yields them all.

    Example:
        >>> import torch, hodfunc
        >>> hodfunc.derivatives(lambda x: 2 * x**3, order=4)(torch.tensor(-2.0))
        tensor([-16.,  24., -24.,  12.,   0.])
    """
    return _scalar_jet("hodfunc.derivatives", f, order, argnums, method, only_top=False)


def partial(
    f: Callable[P, Tensor],
    wrt: tuple[int, ...] | list[int],
    *,
    argnums: int = 0,
    method: Method = "auto",
) -> Callable[P, Tensor]:
    """A mixed partial derivative; ``wrt`` lists flat indices into the argument.

    ``partial(f, wrt=(0, 0, 2))(x) = d^3 f / dx_0^2 dx_2`` where ``x_i = x.flatten()[i]``. An empty
    ``wrt`` gives the value.

    Example:
        >>> import torch, hodfunc
        >>> f = lambda x: x[0] ** 2 * x[1] ** 3
        >>> hodfunc.partial(f, wrt=(0, 1, 1))(torch.tensor([1.0, 2.0]))
        tensor(24.)
    """
    api = "hodfunc.partial"
    check_callable(api, f)
    indices = check_wrt(api, wrt)
    check_argnums(api, argnums)
    engine = resolve(api, method)

    @functools.wraps(f)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> Tensor:
        call = Call.bind(api, f, args, kwargs, argnums)
        check_wrt_range(api, indices, call.x)
        warn_precision(api, call.x, len(indices))
        result = engine.partial(call, indices)
        warn_per_element(api, call.x, (indices,), (result,))
        return result

    return entry(method, wrapped)


def _check_terms(
    api: str, wrt: object
) -> tuple[tuple[str, ...] | None, tuple[tuple[int, ...], ...]]:
    """``(names or None, the wrt tuples)`` of ``partials``' ``wrt``, checked."""
    fix = (
        'Pass a mapping such as {"u": (), "u_x": (0,), "u_xx": (0, 0)}, or a sequence of wrt '
        "tuples."
    )
    if isinstance(wrt, Mapping):
        bad = [k for k in wrt if not isinstance(k, str)]
        if bad:
            raise ArgumentTypeError(
                message(api, "the names in wrt must be strings", repr(bad[0]), fix)
            )
        names: tuple[str, ...] | None = tuple(wrt)
        values = list(wrt.values())
    elif isinstance(wrt, Sequence) and not isinstance(wrt, (str, bytes)):
        names, values = None, list(wrt)
    else:
        raise ArgumentTypeError(
            message(
                api,
                "wrt must be a mapping from names to wrt tuples, or a sequence of them",
                repr(wrt),
                fix,
            )
        )
    if not values:
        raise ArgumentError(message(api, "wrt must name at least one partial", repr(wrt), fix))
    return names, tuple(check_wrt(api, v) for v in values)


PARTIALS_MAX_ORDER = 16
"""The highest order ``partials`` takes: its jet holds normalized coefficients without the
radius ladder of the univariate transforms, which a derivative along one coordinate at a higher
order needs (``derivatives``)."""

PARTIALS_MAX_ROWS = 1024
"""The most monomials one ``partials`` jet may hold (each is a row through every layer)."""


def _check_jet_size(api: str, terms: tuple[tuple[int, ...], ...]) -> None:
    """Refuse, when the transform is built, terms whose jet would be too high or too large."""
    high = max(terms, key=len)
    if len(high) > PARTIALS_MAX_ORDER:
        raise ArgumentError(
            message(
                api,
                f"partials computes orders up to {PARTIALS_MAX_ORDER} (its jet has no radius "
                "ladder to keep higher coefficients in range)",
                f"a term of order {len(high)}",
                "For one high-order derivative along a coordinate use hodfunc.derivatives or "
                "hodfunc.partial, which stay right at every order.",
            )
        )
    variables, monomials = exponents(terms)
    if not variables:
        return
    rows = len(closure(monomials))
    if rows > PARTIALS_MAX_ROWS:
        raise ArgumentError(
            message(
                api,
                f"one partials jet holds at most {PARTIALS_MAX_ROWS} monomials (each one a row "
                "through every layer), and these terms need more",
                f"{rows} monomials over {len(variables)} coordinates",
                "Split the terms over several partials calls, or use method='nested'.",
            )
        )


@overload
def partials(
    f: Callable[P, Tensor],
    wrt: Mapping[K, Sequence[int]],
    *,
    argnums: int = 0,
    method: Method = "auto",
) -> Callable[P, dict[K, Tensor]]: ...


@overload
def partials(
    f: Callable[P, Tensor],
    wrt: Sequence[Sequence[int]],
    *,
    argnums: int = 0,
    method: Method = "auto",
) -> Callable[P, tuple[Tensor, ...]]: ...


def partials(
    f: Callable[P, Tensor],
    wrt: Mapping[K, Sequence[int]] | Sequence[Sequence[int]],
    *,
    argnums: int = 0,
    method: Method = "auto",
) -> Callable[P, dict[K, Tensor]] | Callable[P, tuple[Tensor, ...]]:
    """Several partial derivatives of ``f`` from one shared propagation: the terms of a PDE
    residual.

    ``wrt`` maps names to flat-index tuples as ``partial`` takes them (``()`` is the value), and
    the result is a dict with the same keys; a sequence of tuples gives a tuple. Like ``partial``
    it works per point: map it over collocation points with ``torch.func.vmap`` or
    ``hodfunc.batched``, and differentiate it with ``torch.func.grad`` or autograd.

    In Taylor mode all terms come from one multivariate Taylor jet whose seed variables are the
    coordinates the terms name. Its rows are the monomials the terms divide: ``u``, ``u_t``,
    ``u_x``, ``u_xx`` need the rows 1, t, x, x^2 (four coefficients per value), and a mixed
    ``u_xy`` adds only the rows y and xy. Each partial is read off its own row, exactly: there is
    no interpolation, so a mixed partial has no cancellation error. This is meant for the low
    orders of PDE operators (the cost per op grows about with the order times the number of rows);
    for one high-order derivative along one direction ``derivatives`` is cheaper and range-safe.
    Orders go up to 16 and one jet holds up to 1024 monomials (both checked when the transform is
    built). The jet has no radius ladder: a coefficient that overflows comes back as inf with a
    ``RangeWarning``, but one that underflows on the way (a product of two tiny first orders in
    float32, ``(1 + 1e-25 x)(1 + 1e-25 y) 1e30`` at ``xy``) is flushed to zero like any float32
    product; compute in float64 where coordinates differ in scale by that much.
    ``method="nested"`` computes each term with its own nest.

    Example:
        >>> import torch, hodfunc
        >>> f = lambda z: torch.sin(z[0]) * z[1] ** 2
        >>> d = hodfunc.partials(f, {"u": (), "u_x": (0,), "u_xy": (0, 1), "u_yy": (1, 1)})
        >>> {k: round(v.item(), 4) for k, v in d(torch.tensor([0.5, 2.0])).items()}
        {'u': 1.9177, 'u_x': 3.5103, 'u_xy': 3.5103, 'u_yy': 0.9589}
        >>> X = torch.rand(128, 2)
        >>> u, u_xx = torch.func.vmap(hodfunc.partials(f, [(), (0, 0)]))(X)
        >>> bool(torch.allclose(u_xx, -u))
        True
    """
    api = "hodfunc.partials"
    check_callable(api, f)
    names, terms = _check_terms(api, wrt)
    _check_jet_size(api, terms)
    check_argnums(api, argnums)
    engine = resolve(api, method)
    order = max(len(t) for t in terms)

    def compute(*args: object, **kwargs: object) -> tuple[Tensor, ...]:
        call = Call.bind(api, f, args, kwargs, argnums)
        for term in terms:
            check_wrt_range(api, term, call.x)
        warn_precision(api, call.x, order)
        results = engine.partials(call, terms)
        warn_per_element(api, call.x, terms, results)
        return results

    if names is None:

        @functools.wraps(f)
        def as_tuple(*args: P.args, **kwargs: P.kwargs) -> tuple[Tensor, ...]:
            return compute(*args, **kwargs)

        return entry(method, as_tuple)

    keys: tuple[K, ...] = tuple(wrt)  # type: ignore[arg-type]

    @functools.wraps(f)
    def as_dict(*args: P.args, **kwargs: P.kwargs) -> dict[K, Tensor]:
        return dict(zip(keys, compute(*args, **kwargs), strict=True))

    return entry(method, as_dict)


@overload
def directional_derivative(
    f: Callable[[Unpack[Ts]], Tensor], order: int, *, argnums: int = 0, method: Method = "auto"
) -> WithDirection[Unpack[Ts]]: ...


@overload
def directional_derivative(
    f: Callable[P, Tensor], order: int, *, argnums: int = 0, method: Method = "auto"
) -> WithDirection[Unpack[tuple[object, ...]]]: ...


def directional_derivative(
    f: Callable[P, Tensor], order: int, *, argnums: int = 0, method: Method = "auto"
) -> WithDirection[Unpack[tuple[object, ...]]]:
    """``g(*args, v, **kwargs) = d^k/dt^k f(x + t v)`` at ``t = 0``, where ``x = args[argnums]``.

    ``v`` has the shape of ``x`` and comes last among the positional arguments; keyword
    arguments go on to ``f``. For ``order=1`` this is the Jacobian-vector product; for
    ``order=2`` it is ``v^T H v``. (Typing: ``WithDirection`` keeps ``f``'s positional
    parameter types and adds ``v``; keyword arguments are checked by ``f`` when called, since
    Python's typing cannot append a parameter after a ``ParamSpec``.)

    Example:
        >>> import torch, hodfunc
        >>> g = hodfunc.directional_derivative(lambda x: (x**3).sum(), order=2)
        >>> g(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 1.0]))
        tensor(18.)
        >>> h = hodfunc.directional_derivative(lambda x, *, a: (a * x**2).sum(), order=1)
        >>> h(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 0.0]), a=3.0)
        tensor(6.)
    """
    api = "hodfunc.directional_derivative"
    check_callable(api, f)
    check_order(api, order)
    check_argnums(api, argnums)
    engine = resolve(api, method)

    @functools.wraps(f)
    def wrapped(*args_and_v: object, **kwargs: object) -> Tensor:
        args, v = split_direction(api, "v", args_and_v)
        call = Call.bind(api, f, args, kwargs, argnums)
        direction = check_same_shape(api, "the direction v", v, call.x)
        warn_precision(api, call.x, order)
        return engine.jet(call, direction.to(call.x.dtype), order, read=order)[order]

    append_parameter(wrapped, f, "v")
    return entry(method, wrapped)


def laplacian(
    f: Callable[P, Tensor],
    *,
    weights: Tensor | None = None,
    factor: bool = False,
    signs: Tensor | None = None,
    estimator: Estimator = "exact",
    samples: int | None = None,
    distribution: Distribution = "rademacher",
    generator: torch.Generator | None = None,
    argnums: int = 0,
    method: Method = "auto",
) -> Callable[P, Tensor]:
    """The Laplacian ``sum_i d^2 f / dx_i^2``, or the weighted Laplacian ``tr(C Hess f)``, over
    every coordinate of the argument (flat indices, ``d = x.numel()``).

    ``f`` may return any shape; the operator is taken elementwise (every output component in the
    same propagation) and has that shape. All forms run in collapsed Taylor mode (the forward
    Laplacian): one propagation carrying the value, the summed second order and one first order
    per direction.

    - ``weights=None``: ``C = I``, ``d`` directions.
    - ``weights=C`` of shape ``(d, d)`` (``factor=False``, the default): any ``C``, symmetric or
      not (``tr(C H) = tr(sym(C) H)``), definite or not, exactly: the ``d`` unit directions with
      the form ``sym(C)`` in the second order (``sum_kl C_kl d^2 f[e_k, e_l]``, one ``d x d``
      contraction per nonlinear op), differentiable in ``C``.
    - ``weights=S`` of shape ``(d, r)`` with ``factor=True``: ``C = S S^T``, propagating the
      ``r`` columns of ``S`` instead of ``d`` directions. ``signs`` (shape ``(r,)``) makes it
      ``C = S diag(signs) S^T``: an indefinite ``C`` of low rank, still ``r`` directions (the
      signed sum of their second orders). The keyword, not the shape, tells ``C`` from ``S``:
      a square ``S`` is a factor only with ``factor=True``.

    ``estimator`` (``samples`` per call; ``generator`` a ``torch.Generator`` for reproducible
    draws, shared by every point of a ``vmap``):

    - ``"hutchinson"``: ``(1/s) sum_k v_k^T H v_k`` over ``s`` random ``v = S z`` (``z`` of
      ``distribution`` ``"rademacher"`` or ``"normal"``, ``E[z z^T] = I``); for a full ``C``,
      ``(C z)^T H z`` by polarization (``2 s`` signed directions). Unbiased; the variance per
      sample of ``z^T A z`` is ``2 (|A|_F^2 - sum_i A_ii^2)`` (Rademacher) or ``2 |A|_F^2``
      (normal) for ``A = S^T H S``.
    - ``"stde"``: sparse STDE. ``s`` distinct coordinates ``J`` drawn uniformly: ``(d/s) sum_J
      d_j^2 f`` (``weights=None``), the columns of ``S`` likewise, or for a full ``C`` the block
      ``C_JJ`` with its diagonal scaled by ``d/s`` and its off-diagonal by ``d (d-1) / (s (s-1))``
      (``samples >= 2``). Unbiased, ``s`` unit directions: for very high ``d``.

    Raises:
        ShapeError: ``weights`` of the wrong shape for ``x`` (at call time) or ``signs`` of the
            wrong length.
        ArgumentError: a bad estimator, ``samples`` (an int >= 1, and only with a random
            estimator), distribution or ``method``.

    Example:
        >>> import torch, hodfunc
        >>> lap = hodfunc.laplacian(lambda x: (x**2).sum() + x[0] * x[1])
        >>> lap(torch.tensor([1.0, 2.0, 3.0]))
        tensor(6.)
        >>> C = torch.tensor([[1.0, 0.5, 0.0], [0.5, 2.0, 0.0], [0.0, 0.0, -1.0]])
        >>> hodfunc.laplacian(lambda x: (x**2).sum() + x[0] * x[1], weights=C)(torch.ones(3))
        tensor(5.)
        >>> S = torch.tensor([[1.0], [1.0], [0.0]])  # C = S S^T, one direction
        >>> hodfunc.laplacian(lambda x: x[0] * x[1], weights=S, factor=True)(torch.ones(3))
        tensor(2.)
    """
    api = "hodfunc.laplacian"
    check_callable(api, f)
    check_argnums(api, argnums)
    engine = resolve(api, method)
    samples = check_laplacian_options(
        api, weights, factor, signs, estimator, samples, distribution, generator
    )

    @functools.wraps(f)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> Tensor:
        call = Call.bind(api, f, args, kwargs, argnums)
        warn_precision(api, call.x, 2)
        if weights is None and estimator == "exact":
            return engine.laplacian(call)
        return weighted_laplacian(
            engine, call, weights, factor, signs, estimator, samples, distribution, generator
        )

    return entry(method, wrapped)


def derivative_tensor(
    f: Callable[P, Tensor], order: int, *, argnums: int = 0
) -> Callable[P, Tensor]:
    """The full ``order``-th derivative tensor, of shape ``out_shape + in_shape * order``.

    Entry ``[o, i1, ..., ik]`` is ``d^k f_o / dx_i1 ... dx_ik``; order 1 is the Jacobian, order 2
    the Hessian. Built as ``jacrev`` wrapped ``order - 1`` times in ``torch.func.jacfwd``
    (forward over reverse, like ``torch.func.hessian``).

    Example:
        >>> import torch, hodfunc
        >>> t3 = hodfunc.derivative_tensor(lambda x: x[0] ** 2 * x[1], order=3)
        >>> t3(torch.tensor([1.0, 2.0])).shape
        torch.Size([2, 2, 2])
        >>> t3(torch.tensor([1.0, 2.0]))[0, 0, 1]
        tensor(2.)
    """
    api = "hodfunc.derivative_tensor"
    check_callable(api, f)
    check_order(api, order, fix="For the Jacobian use order=1, for the Hessian order=2.")
    check_argnums(api, argnums)

    @functools.wraps(f)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> Tensor:
        call = Call.bind(api, f, args, kwargs, argnums)
        warn_precision(api, call.x, order)
        g: Callable[[Tensor], Tensor] = call.at
        for level in range(order):
            g = jacrev(g) if level == 0 else jacfwd(g)
        return g(call.x)

    return wrapped
