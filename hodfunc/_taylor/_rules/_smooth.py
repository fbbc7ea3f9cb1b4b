"""Rules of smooth elementwise ops: the algebra's unary map over the recurrences of ``_series``,
and powers."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from .. import _series
from .._algebra import Multivariate, UnaryRule
from ._common import lift, rank_of
from ._products import _mul
from ._spec import Context, Jet, Rule, RuleSpec, decompose, register, rule

_aten = torch.ops.aten
decompose(
    _aten.gelu,
    _aten.silu,
    _aten.softplus,
    _aten._softmax,
    _aten._log_softmax,
    _aten.logsumexp,
    _aten.mish,
    _aten.elu,
    _aten.celu,
    _aten.selu,
    _aten.log_sigmoid_forward,
    _aten.hardswish,
    _aten.hardsigmoid,
    _aten.square,
    _aten.rsub,
    _aten.sinc,
    _aten.logit,
)


def _unary(series_rule: UnaryRule) -> Rule:
    def rule(
        ctx: Context,
        op: Callable[..., object],
        args: tuple[object, ...],
        kwargs: Mapping[str, object],
    ) -> object:
        a = args[0]
        assert isinstance(a, Jet)
        if isinstance(ctx.algebra, Multivariate):  # held split: see Multivariate.unary_parts
            parts = ctx.algebra.unary_parts(series_rule, *a.parts(), affine=a.affine)
            return Jet(split=parts, size=a.size)
        if a.split is not None:
            head, tail = a.split
            return Jet(
                ctx.algebra.unary_split(series_rule, head, tail, affine=a.affine, first=ctx.first)
            )
        donated = id(a) in ctx.donated
        return Jet(
            ctx.algebra.unary(series_rule, a.c, affine=a.affine, donated=donated, first=ctx.first)
        )

    return rule


def _scaled(series_rule: UnaryRule, inner: float, outer: float) -> UnaryRule:
    def scaled(a: Tensor, *, affine: bool = False) -> Tensor:
        return series_rule(a * inner, affine=affine) * outer

    return scaled


def _erfc(a: Tensor, *, affine: bool = False) -> Tensor:
    y = -_series.erf(a, affine=affine)
    return torch.cat([(1 + y[0]).unsqueeze(0), y[1:]])


_UNARY: dict[str, UnaryRule] = {
    "exp": _series.exp,
    "expm1": _series.expm1,
    "log": _series.log,
    "log1p": _series.log1p,
    "sqrt": _series.sqrt,
    "rsqrt": functools.partial(_series.power, r=-0.5),
    "reciprocal": _series.reciprocal,
    "sin": _series.sin,
    "cos": _series.cos,
    "tan": _series.tan,
    "tanh": _series.tanh,
    "sigmoid": _series.sigmoid,
    "erf": _series.erf,
    "erfc": _erfc,
    "atan": _series.atan,
    "asinh": _series.asinh,
    "sinh": _series.sinh,
    "cosh": _series.cosh,
    "exp2": _scaled(_series.exp, math.log(2), 1.0),
    "log2": _scaled(_series.log, 1.0, 1 / math.log(2)),
    "log10": _scaled(_series.log, 1.0, 1 / math.log(10)),
}
for _name, _series_rule in _UNARY.items():
    register(_name, _unary(_series_rule), RuleSpec(unary=True, fresh=True))


@rule(RuleSpec(), "pow")
def _pow(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    base, e = args[0], args[1]
    if isinstance(base, Jet) and isinstance(e, (int, float)):
        power = functools.partial(_series.power, r=float(e))
        return Jet(ctx.algebra.unary(power, base.c, affine=base.affine))
    if not isinstance(base, Jet):
        # base ** e = exp(e log(base)) for a constant base (scalar or tensor)
        assert isinstance(e, Jet)
        log_base = math.log(base) if isinstance(base, (int, float)) else torch.log(base)  # type: ignore[arg-type]
        rank = max(rank_of(base), e.rank)
        return Jet(ctx.algebra.unary(_series.exp, lift(e.c, rank) * log_base))
    # base ** e = exp(e log(base)) for an input-dependent base (which must be positive)
    log_b = Jet(ctx.algebra.unary(_series.log, base.c))
    exponent = _mul(ctx, torch.ops.aten.mul.Tensor, (log_b, e), {})
    assert isinstance(exponent, Jet)
    return Jet(ctx.algebra.unary(_series.exp, exponent.c))
