"""Rules of ops whose result is locally constant (comparisons, ``sign``, ``argmax``...): evaluated
on the value, the result carries no coefficients."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ._common import value
from ._spec import Context, RuleSpec, rule


@rule(
    RuleSpec(),
    "gt",
    "ge",
    "lt",
    "le",
    "eq",
    "ne",
    "sign",
    "sgn",
    "isnan",
    "isinf",
    "isfinite",
    "argmax",
    "argmin",
    "floor",
    "ceil",
    "round",
    "trunc",
    "logical_not",
    "logical_and",
    "logical_or",
    "logical_xor",
    "zeros_like",
    "ones_like",
    "empty_like",
    "full_like",
    "new_zeros",
    "new_ones",
    "new_full",
    "new_empty",
    "bitwise_not",
    "heaviside",
    "sym_size",
)
def _constant(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    plain = tuple([value(x) for x in a] if isinstance(a, (list, tuple)) else value(a) for a in args)
    return op(*plain, **kwargs)


@rule(RuleSpec(linear="all"), "getitem")
def _getitem(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    seq, i = args
    assert isinstance(seq, (list, tuple))
    assert isinstance(i, int)
    return seq[i]
