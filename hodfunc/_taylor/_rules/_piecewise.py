"""Rules of piecewise-linear ops (``relu``, ``abs``, ``clamp``, ``max``...): the local linear map,
chosen by the value. Each records its op in ``Context.piecewise``, so that a transform of order
>= 2 can warn that the higher derivatives through it vanish."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from ._common import dim, lift, no_jets, promote, rank_of, unsupported
from ._spec import Context, Jet, RuleSpec, rule


def _masked(ctx: Context, name: str, a: Jet, value: Tensor, slope: Tensor) -> Jet:
    ctx.piecewise.add(name)
    return Jet(torch.cat([value.unsqueeze(0), a.c[1:] * slope]))


@rule(RuleSpec(linear="all"), "relu")
def _relu(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    a = args[0]
    assert isinstance(a, Jet)
    return _masked(ctx, "aten.relu", a, torch.relu(a.c[0]), (a.c[0] > 0).to(a.c.dtype))


@rule(RuleSpec(linear="all"), "abs")
def _abs(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    a = args[0]
    assert isinstance(a, Jet)
    return _masked(ctx, "aten.abs", a, a.c[0].abs(), torch.sign(a.c[0]))


@rule(RuleSpec(linear="all"), "leaky_relu")
def _leaky_relu(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    a = args[0]
    assert isinstance(a, Jet)
    slope = args[1] if len(args) > 1 else kwargs.get("negative_slope", 0.01)
    assert isinstance(slope, (int, float))
    factor = torch.full_like(a.c[0], slope).masked_fill(a.c[0] > 0, 1.0)
    return _masked(ctx, "aten.leaky_relu", a, a.c[0] * factor, factor)


@rule(RuleSpec(linear="all"), "hardtanh", "clamp", "clamp_min", "clamp_max")
def _clamp(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    a = args[0]
    assert isinstance(a, Jet)
    name = f"{ctx.name}.{ctx.overload}"
    no_jets(ctx, name, args[1:])
    if any(isinstance(v, Tensor) for v in args[1:]):
        raise unsupported(ctx, f"aten.{name} with tensor bounds")
    x = a.c[0]
    if name.startswith("hardtanh"):
        lo = args[1] if len(args) > 1 else -1.0
        hi = args[2] if len(args) > 2 else 1.0
        inside = (x > lo) & (x < hi)  # type: ignore[operator]
    else:
        if name.startswith("clamp_min"):
            lo, hi = args[1], None
        elif name.startswith("clamp_max"):
            lo, hi = None, args[1]
        else:
            lo = args[1] if len(args) > 1 else kwargs.get("min")
            hi = args[2] if len(args) > 2 else kwargs.get("max")
        inside = torch.ones_like(x, dtype=torch.bool)
        if lo is not None:
            inside = inside & (x >= lo)  # type: ignore[operator]
        if hi is not None:
            inside = inside & (x <= hi)  # type: ignore[operator]
    value = op(x, *args[1:], **kwargs)
    assert isinstance(value, Tensor)
    return _masked(ctx, f"aten.{name.split('.')[0]}", a, value, inside.to(a.c.dtype))


@rule(RuleSpec(linear="all"), "maximum", "minimum")
def _maximum(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    return _pairwise(ctx, ctx.name == "maximum", args[0], args[1])


def _pairwise(ctx: Context, largest: bool, a: object, b: object) -> Jet:
    """The elementwise maximum (``largest``) or minimum of ``a`` and ``b``: the larger (smaller)
    side's coefficients, their mean at ties."""
    like = a if isinstance(a, Jet) else b
    assert isinstance(like, Jet)
    rank = max(rank_of(a), rank_of(b))
    ac = lift(promote(ctx, a, like), rank)
    bc = lift(promote(ctx, b, like), rank)
    pick_a = ac[0] > bc[0] if largest else ac[0] < bc[0]
    tie = ac[0] == bc[0]
    out = torch.where(tie, (ac + bc) / 2, torch.where(pick_a, ac, bc))
    ctx.piecewise.add("aten.maximum" if largest else "aten.minimum")
    return Jet(out)


def _gather_at(a: Jet, index: Tensor, d: int, keepdim: bool) -> Jet:
    idx = index.unsqueeze(0).expand(a.c.shape[0], *index.shape)
    out = torch.gather(a.c, d + 1, idx)
    return Jet(out if keepdim else out.squeeze(d + 1))


@rule(RuleSpec(linear="all"), "amax", "amin", "max", "min")
def _extremum(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    a = args[0]
    if len(args) > 1 and isinstance(args[1], (Jet, Tensor)):  # max.other: elementwise
        return _pairwise(ctx, "max" in ctx.name, a, args[1])
    assert isinstance(a, Jet)
    name = f"{ctx.name}.{ctx.overload}"
    largest = "max" in name.split(".")[0]
    arg = torch.argmax if largest else torch.argmin
    if not name.startswith("am"):
        ctx.piecewise.add(f"aten.{name.split('.')[0]}")
    dims = args[1] if len(args) > 1 else kwargs.get("dim", [])
    keep = bool(args[2]) if len(args) > 2 else bool(kwargs.get("keepdim", False))
    if a.rank == 0:  # the extremum of a number is that number
        return (a, torch.zeros((), dtype=torch.long)) if isinstance(dims, int) else a
    if isinstance(dims, int):
        d = dim(dims, a.rank) - 1
        index = arg(a.c[0], d, keepdim=True)
        values = _gather_at(a, index, d, keep)
        return (values, index if keep else index.squeeze(d))
    assert isinstance(dims, (list, tuple))
    if len(dims) == 1:
        d = dim(int(dims[0]), a.rank) - 1
        return _gather_at(a, arg(a.c[0], d, keepdim=True), d, keep)
    if len(dims) == 0 or len(dims) == a.rank:
        flat = Jet(a.c.reshape(a.c.shape[0], -1))
        out = _gather_at(flat, arg(flat.c[0]).reshape(1), 0, False)
        return Jet(out.c.reshape(out.c.shape[0], *([1] * a.rank))) if keep else out
    raise unsupported(ctx, f"aten.{name} over several but not all dims")
