"""Rules of bilinear ops (``mul``, ``mm``, ``bmm``, ``convolution``...) and division: linear when
one side is constant, the algebra's product (Cauchy or collapsed) when both carry coefficients."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from .._memory import compact
from ._common import affine_fresh, coefficientwise, lift, no_jets, promote, rank_of, unsupported
from ._linear import _add
from ._spec import Context, Jet, RuleSpec, decompose, rule

_aten = torch.ops.aten
decompose(
    _aten.addcmul,
    _aten.addcdiv,
    _aten.lerp,
    _aten.xlogy,
)


def _repeated(c: Tensor, linear: Callable[[Tensor], Tensor], mixed: int) -> Tensor:
    """``linear(c)`` for a ``linear`` that maps every dim of ``c`` but ``mixed`` independently,
    computed once along the dims where ``c`` only repeats itself (``compact``)."""
    mixed = mixed % c.dim()
    small = compact(c, keep=mixed)
    if small is c:
        return linear(c)
    out = linear(small)
    return out.expand(*c.shape[:mixed], out.shape[mixed], *c.shape[mixed + 1 :])


def _matmul_const(name: str, a: object, b: object) -> Jet:
    """``a @ b`` where exactly one side is a ``Jet``; the coefficient axis rides as a batch dim."""
    if isinstance(a, Jet):
        assert isinstance(b, Tensor)
        if b.dim() == 2:  # rows of ``a`` map independently
            return coefficientwise(a, lambda c: _repeated(c, lambda r: r @ b, -1))
        return coefficientwise(a, lambda c: torch.matmul(c, b))
    assert isinstance(b, Jet)
    assert isinstance(a, Tensor)
    if name in ("mv", "dot"):
        at = a.transpose(-1, -2) if a.dim() == 2 else a
        return coefficientwise(b, lambda c: torch.matmul(c, at))
    return coefficientwise(b, lambda c: torch.matmul(a, c))


@rule(RuleSpec(linear="one", row_wise=True, fresh=True), "mm", "bmm", "mv", "dot")
@rule(RuleSpec(linear="one", row_wise=True), "matmul")
def _mm(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    return _matmul(ctx, ctx.name, op, args[0], args[1])


def _matmul(ctx: Context, name: str, op: Callable[..., object], a: object, b: object) -> object:
    """``op(a, b)`` for the matrix product ``name`` (``"mm"``, ``"bmm"``...)."""
    if isinstance(a, Jet) and isinstance(b, Jet):
        return Jet(ctx.algebra.product(lambda x, y: op(x, y), a.c, b.c, batched=False))  # type: ignore[arg-type, return-value]
    return _matmul_const(name, a, b)


@rule(RuleSpec(linear="one", row_wise=True, fresh=True), "addmm", "addmv", "baddbmm")
def _addmm(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    bias, a, b = args[0], args[1], args[2]
    beta = kwargs.get("beta", 1)
    alpha = kwargs.get("alpha", 1)
    assert isinstance(beta, (int, float))
    assert isinstance(alpha, (int, float))
    aten = torch.ops.aten
    inner_name, inner = {"addmm": ("mm", aten.mm.default), "addmv": ("mv", aten.mv.default)}.get(
        ctx.name, ("bmm", aten.bmm.default)
    )
    prod: object
    if isinstance(a, Jet) or isinstance(b, Jet):
        prod = _matmul(ctx, inner_name, inner, a, b)
        if alpha != 1:
            assert isinstance(prod, Jet)
            prod = Jet(prod.c * alpha)
    else:
        prod = inner(a, b) * alpha
    if isinstance(prod, Jet) and isinstance(bias, Tensor):
        return affine_fresh(prod, bias if beta == 1 else bias * beta)
    scaled_bias = bias
    if beta != 1:
        scaled_bias = Jet(bias.c * beta) if isinstance(bias, Jet) else bias * beta  # type: ignore[operator]
    return _add(ctx, torch.ops.aten.add.Tensor, (prod, scaled_bias), {})


@rule(RuleSpec(linear="one", fresh=True), "convolution")
def _convolution(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    x, w, bias = args[0], args[1], args[2]
    rest = args[3:]
    no_jets(ctx, "convolution", [bias])
    if isinstance(x, Jet) and not isinstance(w, Jet):
        L, n = x.c.shape[0], x.c.shape[1]
        out = op(x.c.reshape(L * n, *x.c.shape[2:]), w, None, *rest)
        assert isinstance(out, Tensor)
        y = Jet(out.reshape(L, n, *out.shape[1:]))
    elif isinstance(x, Jet) and isinstance(w, Jet):
        y = Jet(ctx.algebra.product(lambda p, q: op(p, q, None, *rest), x.c, w.c, batched=False))  # type: ignore[arg-type, return-value]
    else:
        assert isinstance(w, Jet)
        y = Jet(torch.func.vmap(lambda q: op(x, q, None, *rest))(w.c))  # type: ignore[arg-type]
    if bias is None:
        return y
    assert isinstance(bias, Tensor)
    return affine_fresh(y, bias.reshape(-1, *([1] * (y.rank - 2))))


@rule(RuleSpec(linear="one", row_wise=True, fresh=True), "mul")
def _mul(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    a, b = args[0], args[1]
    rank = max(rank_of(a), rank_of(b))
    if isinstance(a, Jet) and isinstance(b, Jet):
        return Jet(ctx.algebra.product(torch.mul, lift(a.c, rank), lift(b.c, rank), batched=True))
    if isinstance(a, Jet):
        return coefficientwise(a, lambda c: lift(c, rank) * b)  # type: ignore[operator]
    assert isinstance(b, Jet)
    return coefficientwise(b, lambda c: a * lift(c, rank))  # type: ignore[operator]


@rule(RuleSpec(linear="numerator", fresh=True), "div")
def _div(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    if kwargs.get("rounding_mode") is not None:
        raise unsupported(ctx, "aten.div with rounding_mode (piecewise constant)")
    a, b = args[0], args[1]
    rank = max(rank_of(a), rank_of(b))
    if not isinstance(b, Jet):
        assert isinstance(a, Jet)
        return coefficientwise(a, lambda c: lift(c, rank) / b)  # type: ignore[operator]
    bc = lift(b.c, rank)
    ac = lift(promote(ctx, a, b), rank)
    return Jet(ctx.algebra.divide(ac, bc))
