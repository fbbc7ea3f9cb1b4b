"""Rules of linear ops: views, indexing, reductions, ``cat``, and adding a constant (which goes to
coefficient 0 only). A linear op runs once on the stacked coefficients, with dims shifted past the
coefficient axis, or through ``vmap`` over it."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from ._common import (
    affine,
    affine_fresh,
    coefficientwise,
    dim,
    lift,
    no_jets,
    promote,
    rank_of,
    vmapped,
)
from ._spec import Context, Jet, RuleSpec, decompose, rule

_aten = torch.ops.aten
decompose(
    _aten.linalg_vector_norm,
    _aten.var,
    _aten.var_mean,
    _aten.std,
    _aten.native_layer_norm,
    _aten.native_batch_norm,
    _aten._native_batch_norm_legit,
    _aten._native_batch_norm_legit_no_training,
    _aten._native_batch_norm_legit_functional,
    _aten.native_group_norm,
    _aten.embedding,
)


@rule(
    RuleSpec(linear="all"),
    "index",
    "index_select",
    "gather",
    "narrow",
    "diagonal",
    "flip",
    "roll",
    "repeat",
    "cumsum",
    "unfold",
    "split",
    "split_with_sizes",
    "unbind",
    "chunk",
    "tril",
    "triu",
    "trace",
    "diag_embed",
    "_to_copy",
    "to",
    "constant_pad_nd",
    "movedim",
    "diag",
    "im2col",
    "col2im",
    "_unsafe_index",
    "expand_copy",
    "view_copy",
    "permute_copy",
    "slice_copy",
    "select_copy",
    "unsqueeze_copy",
    "transpose_copy",
    "t_copy",
    "squeeze_copy",
    "alias_copy",
    "as_strided",
    "reflection_pad1d",
    "reflection_pad2d",
    "replication_pad1d",
    "replication_pad2d",
    "pixel_shuffle",
    "avg_pool1d",
    "avg_pool2d",
)
@rule(RuleSpec(linear="all", row_wise=True), "mean", "sum")
def _linear_first(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    no_jets(ctx, "op", args[1:])
    name = f"{ctx.name}.{ctx.overload}"
    a = args[0]
    assert isinstance(a, Jet)
    if name in ("sum.default", "mean.default") or (
        name in ("sum.dim_IntList", "mean.dim") and args[1] in (None, [], ())
    ):
        flat = a.c.reshape(a.c.shape[0], -1)
        out = flat.sum(1) if name.startswith("sum") else flat.mean(1)
        if len(args) > 2 and args[2]:  # keepdim
            out = out.reshape(out.shape[0], *([1] * a.rank))
        dtype = kwargs.get("dtype")
        return Jet(out.to(dtype) if isinstance(dtype, torch.dtype) else out)
    if name in ("sum.dim_IntList", "mean.dim") and not kwargs:
        dims = args[1]
        assert isinstance(dims, (list, tuple))
        shifted = [dim(int(d), a.rank) for d in dims]
        keep = bool(args[2]) if len(args) > 2 else False
        return Jet(
            a.c.sum(shifted, keepdim=keep)
            if name.startswith("sum")
            else a.c.mean(shifted, keepdim=keep)
        )
    return vmapped(op, args, kwargs)


@rule(RuleSpec(linear="all", row_wise=True), "view", "reshape")
@rule(RuleSpec(linear="all", row_wise=True, view=True), "_unsafe_view")
def _view(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    a = args[0]
    assert isinstance(a, Jet)
    shape = args[1]
    assert isinstance(shape, (list, tuple))
    return coefficientwise(a, lambda c: c.reshape(c.shape[0], *shape))


@rule(RuleSpec(linear="all", row_wise=True), "expand")
def _expand(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    a = args[0]
    assert isinstance(a, Jet)
    sizes = args[1]
    assert isinstance(sizes, (list, tuple))
    return coefficientwise(a, lambda c: lift(c, len(sizes)).expand(c.shape[0], *sizes))


@rule(RuleSpec(linear="all", row_wise=True), "permute")
def _permute(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    a = args[0]
    assert isinstance(a, Jet)
    dims = args[1]
    assert isinstance(dims, (list, tuple))
    order = [dim(int(d), a.rank) for d in dims]
    return coefficientwise(a, lambda c: c.permute(0, *order))


@rule(RuleSpec(linear="all", row_wise=True), "t")
@rule(RuleSpec(linear="all"), "numpy_T")
def _t(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    a = args[0]
    assert isinstance(a, Jet)
    return a if a.rank < 2 else coefficientwise(a, lambda c: c.transpose(1, 2))


@rule(RuleSpec(linear="all", row_wise=True), "transpose")
def _transpose(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    a = args[0]
    assert isinstance(a, Jet)
    d0, d1 = args[1], args[2]
    assert isinstance(d0, int)
    assert isinstance(d1, int)
    d0, d1 = dim(d0, a.rank), dim(d1, a.rank)
    return coefficientwise(a, lambda c: c.transpose(d0, d1))


@rule(RuleSpec(row_wise=True), "squeeze")
def _squeeze(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    a = args[0]
    assert isinstance(a, Jet)
    shape = a.split[0].shape if a.split is not None else a.c.shape[1:]
    given = args[1] if len(args) > 1 else range(a.rank)
    listed = given if isinstance(given, (list, tuple, range)) else [given]
    dims = [d for d in listed if isinstance(d, int)]
    shifted = tuple(dim(d, a.rank) for d in dims if shape[d] == 1)
    return coefficientwise(a, lambda c: c.squeeze(shifted) if shifted else c)


@rule(RuleSpec(linear="all", row_wise=True), "unsqueeze")
def _unsqueeze(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    a = args[0]
    assert isinstance(a, Jet)
    d = args[1]
    assert isinstance(d, int)
    return coefficientwise(a, lambda c: c.unsqueeze(dim(d, a.rank + 1)))


@rule(RuleSpec(linear="all"), "select")
def _select(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    a = args[0]
    assert isinstance(a, Jet)
    d, i = args[1], args[2]
    assert isinstance(d, int)
    assert isinstance(i, int)
    d = dim(d, a.rank)
    return coefficientwise(a, lambda c: c.select(d, i))


@rule(RuleSpec(linear="all"), "slice")
def _slice(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    a = args[0]
    assert isinstance(a, Jet)
    d = args[1] if len(args) > 1 else 0
    assert isinstance(d, int)
    d = dim(d, a.rank)
    return coefficientwise(a, lambda c: torch.ops.aten.slice.Tensor(c, d, *args[2:]))


@rule(RuleSpec(linear="all"), "clone", "alias", "contiguous", "lift_fresh_copy", "positive")
def _identity(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    return args[0]


@rule(RuleSpec(linear="all", row_wise=True), "neg")
def _neg(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    a = args[0]
    assert isinstance(a, Jet)
    return coefficientwise(a, torch.neg)


@rule(RuleSpec(), "detach")
def _detach(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    a = args[0]
    assert isinstance(a, Jet)
    return a.c[0].detach()


@rule(RuleSpec(linear="all"), "cat", "stack")
def _join(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    parts = args[0]
    assert isinstance(parts, (list, tuple))
    like = next(p for p in parts if isinstance(p, Jet))
    rank = like.rank
    coefs = [promote(ctx, p, like) for p in parts]
    d = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    assert isinstance(d, int)
    if ctx.name == "stack":
        return Jet(torch.stack(coefs, dim(d, rank + 1)))
    return Jet(torch.cat([c for c in coefs if c.dim() > 1 or c.shape[-1:] != (0,)], dim(d, rank)))


# ---------------------------------------------------------------- affine and elementwise linear


@rule(RuleSpec(linear="all", row_wise=True, adds_in_place=True), "add", "sub")
def _add(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    a, b = args[0], args[1]
    alpha = kwargs.get("alpha", 1)
    assert isinstance(alpha, (int, float))
    sign = -1 if ctx.name == "sub" else 1  # also called by addmm's rule: then an add
    scale = sign * alpha
    if isinstance(a, Jet) and isinstance(b, Jet):
        rank = max(a.rank, b.rank)
        bc = lift(b.c, rank)
        return Jet(lift(a.c, rank) + (bc if scale == 1 else bc * scale))
    if isinstance(a, Jet):
        const = b if scale == 1 else b * scale  # type: ignore[operator]
        return affine_fresh(a, const) if id(a) in ctx.donated else affine(a, const)
    assert isinstance(b, Jet)
    if scale == 1:
        return affine_fresh(b, a) if id(b) in ctx.donated else affine(b, a)
    return affine_fresh(Jet(b.c * scale), a)  # a new tensor: add in place


@rule(RuleSpec(linear="all"), "where")
def _where(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    cond, a, b = args[0], args[1], args[2]
    no_jets(ctx, "where", [cond])
    assert isinstance(cond, Tensor)
    like = a if isinstance(a, Jet) else b
    assert isinstance(like, Jet)
    rank = max(cond.dim(), rank_of(a), rank_of(b))
    ac = lift(promote(ctx, a, like), rank)
    bc = lift(promote(ctx, b, like), rank)
    return Jet(torch.where(cond, ac, bc))


@rule(RuleSpec(linear="all"), "masked_fill")
def _masked_fill(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    a, mask, value = args[0], args[1], args[2]
    assert isinstance(a, Jet)
    assert isinstance(mask, Tensor)
    no_jets(ctx, "masked_fill", [value])
    head = a.c[0].masked_fill(mask, value)  # type: ignore[call-overload]  # a tensor or a number
    tail = lift(a.c[1:], mask.dim()).masked_fill(mask, 0)
    return Jet(torch.cat([head.unsqueeze(0), tail]))


@rule(RuleSpec(linear="all"), "index_add")
def _index_add(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    """``self.index_add(dim, index, source, alpha)``: linear in ``self`` and ``source`` together
    (a Taylor propagation traced by another one sums its products this way)."""
    base, d, index, source = args[0], args[1], args[2], args[3]
    alpha = kwargs.get("alpha", 1)
    no_jets(ctx, "index_add", [index])
    assert isinstance(index, Tensor)
    assert isinstance(d, int)
    like = base if isinstance(base, Jet) else source
    assert isinstance(like, Jet)
    rank = max(rank_of(base), rank_of(source))
    bc = lift(promote(ctx, base, like), rank)
    sc = lift(promote(ctx, source, like), rank)
    return Jet(bc.index_add(dim(d, rank), index, sc, alpha=alpha))  # type: ignore[arg-type]
