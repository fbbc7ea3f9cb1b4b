"""The Taylor rule of every supported ATen op, keyed by op name.

A rule receives the op's arguments with every input-dependent tensor as a ``Jet`` (its coefficient
tensor, leading axis = coefficients) and everything else as it is, and returns the result in the
same form. Rules fall in a few families:

- linear ops (views, indexing, reductions, ``cat``...): run once on the stacked coefficients, with
  dims shifted by one or through ``vmap`` over the coefficient axis;
- affine ops (``add`` of a constant, bias of ``addmm``/``convolution``): the constant goes to
  coefficient 0 only;
- bilinear ops (``mul``, ``mm``, ``bmm``, ``mv``, ``convolution``...): linear when one side is
  constant, the algebra's product (Cauchy or collapsed) when both carry coefficients;
- smooth elementwise ops: the algebra's unary map over the recurrences of ``_series``;
- piecewise-linear ops (``relu``, ``abs``, ``clamp``...): the local linear map, chosen by the value;
  they are recorded so that a transform of order >= 2 can warn that their higher derivatives vanish;
- ops whose result is locally constant (comparisons, ``sign``, ``argmax``...): evaluated on the
  value, the result carries no coefficients.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .._errors import UnsupportedOperationError, message
from .._functorch import tracing
from . import _series
from ._algebra import Algebra, UnaryRule, join
from ._memory import compact

__all__ = [
    "ADDS_IN_PLACE",
    "FRESH_RESULTS",
    "ROW_WISE",
    "RULES",
    "UNARY_OPS",
    "VIEWS",
    "Context",
    "Jet",
    "Rule",
    "has_rule",
    "keeps_affine",
    "lookup",
]


class Jet:
    """An input-dependent tensor: its coefficients, stacked on a leading axis (``c``).

    A jet may also be held *split*, its value (``head``) apart from the other coefficients
    (``tail``), because under ``vmap`` the two are often batched differently: the value depends on
    the point, the directions seeded at the input do not, and neither do their images under the
    linear layers before the first nonlinearity. Kept apart, those images cost one small
    unbatched matmul instead of one per point. ``c`` joins the parts on first use, so every rule
    is right on a split jet; the rules of linear ops and the algebras' unary maps keep the parts
    apart where they can (``split``).

    A split jet's tail may also be *short*: ``size`` counts all coefficients, and those the tail
    leaves out are zeros. A univariate jet seeded at ``x + t v`` is ``(x, [v])`` of size ``K + 1``:
    the linear layers before the first nonlinearity then carry two rows instead of ``K + 1``.
    """

    __slots__ = ("_c", "_size", "_split", "affine", "through")

    def __init__(
        self,
        c: Tensor | None = None,
        through: frozenset[str] = frozenset(),
        affine: bool = False,
        *,
        split: tuple[Tensor, Tensor] | None = None,
        size: int | None = None,
    ) -> None:
        if (c is None) == (split is None):
            raise TypeError("Jet takes the coefficients or their split, not both")
        self._c = c
        self._split = split
        if split is not None:
            self._size = 1 + split[1].shape[0] if size is None else size
            if self._size < 1 + split[1].shape[0]:
                raise ValueError(f"Jet of size {self._size} given {split[1].shape[0]} tail rows")
        else:
            assert c is not None
            self._size = c.shape[0]
        self.through = through
        """The piecewise-linear ops on this value's path (kept by the interpreter, not by rules)."""
        self.affine = affine
        """Whether the value is an affine function of ``t`` (``c[k] = 0`` for k >= 2), as
        ``x + t v`` and every linear layer of it are: the first nonlinear op then has a cheaper
        recurrence. Kept by the interpreter (``keeps_affine``), not by rules."""

    @property
    def c(self) -> Tensor:
        """All coefficients, ``(size, *value.shape)``."""
        if self._c is None:
            assert self._split is not None
            self._c = join(*self._split, self._size)
        return self._c

    @property
    def size(self) -> int:
        """The number of coefficients, the value included."""
        return self._size

    @property
    def split(self) -> tuple[Tensor, Tensor] | None:
        """``(value, the next coefficients)`` if this jet was built from them, else ``None``; the
        coefficients after those (up to ``size``) are zeros."""
        return self._split

    @property
    def rank(self) -> int:
        """The number of dims of the value itself."""
        return self._split[0].dim() if self._split is not None else self.c.dim() - 1

    def retagged(self, through: frozenset[str], affine: bool) -> Jet:
        """The same coefficients with other interpreter tags."""
        if self._split is not None and self._c is None:
            return Jet(through=through, affine=affine, split=self._split, size=self._size)
        return Jet(self.c, through, affine)


@dataclass
class Context:
    """State of one propagation: the algebra, and the piecewise-linear ops met.

    A piecewise rule adds its op to ``piecewise``; the interpreter moves those names onto the
    result's ``Jet.through`` and unions them along the graph, so ``reached`` (set at the end) names
    only the ops on the output's path, not those feeding a mask (as ``abs`` in ``logsumexp``).
    """

    algebra: Algebra
    api: str
    piecewise: set[str] = field(default_factory=set)
    reached: frozenset[str] = frozenset()
    donated: frozenset[int] = frozenset()
    """``id``s of the argument ``Jet``s the current rule may overwrite (set by the interpreter)."""
    first: bool = True
    """Whether anything downstream reads the current rule's first-order coefficients (collapsed
    mode; set by the interpreter)."""


Rule = Callable[[Context, Callable[..., object], tuple[object, ...], Mapping[str, object]], object]
RULES: dict[str, Rule] = {}


def has_rule(name: str) -> bool:
    """Whether the op named ``name`` (no namespace, no overload) has a Taylor rule.

    In-place ops (``add_``) have none on purpose: a rule returns a new value and would silently drop
    the mutation (a BatchNorm's running statistics, say), so they fall back to nested torch.func.
    """
    return name in RULES


def lookup(name: str) -> Rule:
    """The rule of ``name``."""
    return RULES[name]


_LINEAR_IN_ALL = frozenset(
    {
        "view",
        "_unsafe_view",
        "reshape",
        "expand",
        "permute",
        "t",
        "numpy_T",
        "transpose",
        "unsqueeze",
        "select",
        "slice",
        "clone",
        "alias",
        "contiguous",
        "lift_fresh_copy",
        "positive",
        "neg",
        "cat",
        "stack",
        "add",
        "sub",
        "where",
        "masked_fill",
        "getitem",
        "relu",
        "abs",
        "leaky_relu",
        "hardtanh",
        "clamp",
        "clamp_min",
        "clamp_max",
        "maximum",
        "minimum",
        "amax",
        "amin",
        "max",
        "min",
    }
)
_LINEAR_IN_ONE = frozenset(
    {"mul", "mm", "bmm", "mv", "dot", "matmul", "addmm", "addmv", "baddbmm", "convolution"}
)


def keeps_affine(name: str, args: tuple[object, ...], jets: list[Jet]) -> bool:
    """Whether op ``name`` maps affine inputs (``Jet.affine``) to an affine result."""
    if not jets or not all(j.affine for j in jets):
        return False
    if name in _LINEAR_IN_ALL or (name in RULES and RULES[name] is _linear_first):
        return True
    if name in _LINEAR_IN_ONE:
        return len(jets) == 1
    return name == "div" and len(jets) == 1 and isinstance(args[0], Jet)


def _rule(*names: str) -> Callable[[Rule], Rule]:
    def register(rule: Rule) -> Rule:
        for name in names:
            RULES[name] = rule
        return rule

    return register


def _unsupported(ctx: Context, what: str) -> UnsupportedOperationError:
    return UnsupportedOperationError(
        message(
            ctx.api,
            "Taylor mode has no rule for this use of an operation",
            what,
            'Use method="nested" (or "auto", which falls back to it).',
        )
    )


# ---------------------------------------------------------------- helpers


def _lift(c: Tensor, rank: int) -> Tensor:
    """Insert unit dims after the coefficient axis so the value has at least ``rank`` dims."""
    have = c.dim() - 1
    if have >= rank:
        return c
    return c.reshape(c.shape[0], *([1] * (rank - have)), *c.shape[1:])


def _rank_of(v: object) -> int:
    if isinstance(v, Jet):
        return v.rank
    if isinstance(v, Tensor):
        return v.dim()
    return 0


def _promote(ctx: Context, v: object, like: Jet) -> Tensor:
    """Coefficients of ``v``: a constant has zero coefficients beyond the value."""
    if isinstance(v, Jet):
        return v.c
    t = v if isinstance(v, Tensor) else torch.tensor(v, dtype=like.c.dtype, device=like.c.device)
    zeros = torch.zeros_like(t).unsqueeze(0).expand(ctx.algebra.size - 1, *t.shape)
    return torch.cat([t.unsqueeze(0), zeros])


def _coefficientwise(a: Jet, linear: Callable[[Tensor], Tensor]) -> Jet:
    """``linear`` (which maps the leading axis as a batch axis) applied to every coefficient of
    ``a``; a split jet stays split."""
    if a.split is None:
        return Jet(linear(a.c))
    head, tail = a.split
    return Jet(split=(linear(head.unsqueeze(0))[0], linear(tail)), size=a.size)


def _affine(a: Jet, const: object) -> Jet:
    """``a + const`` with the constant added to coefficient 0 only."""
    if isinstance(const, (int, float)) and const == 0:
        return a
    if a.split is not None:
        head, tail = a.split
        head = head + const  # type: ignore[operator]  # a tensor or a number
        if tuple(head.shape) != tuple(tail.shape[1:]):
            tail = _lift(tail, head.dim()).expand(tail.shape[0], *head.shape)
        return Jet(split=(head, tail), size=a.size)
    head = a.c[0] + const  # type: ignore[operator]  # a tensor or a number
    tail = a.c[1:]
    if tuple(head.shape) != tuple(tail.shape[1:]):
        tail = _lift(tail, head.dim()).expand(tail.shape[0], *head.shape)
    return Jet(torch.cat([head.unsqueeze(0), tail]))


def _fits(shape: Sequence[int], into: Sequence[int]) -> bool:
    """Whether ``shape`` broadcasts to ``into`` without growing it (``torch.broadcast_shapes``
    is pure Python and slow for a test on every linear layer)."""
    return len(shape) <= len(into) and all(
        s in (1, t) for s, t in zip(reversed(shape), reversed(into), strict=False)
    )


def _affine_fresh(a: Jet, const: object) -> Jet:
    """``_affine`` for a ``Jet`` this rule just computed: add in place to coefficient 0.

    Saves a full copy of the coefficients (a bias after every linear layer). In place is safe: the
    tensor is new and no backward formula saved it. When ``const`` is batched at a ``vmap`` level
    that ``a`` is not, torch refuses the in-place add, and the copy is made after all.
    """
    if a.split is not None:
        return _affine(a, const)
    if (
        tracing()
        or not isinstance(const, (Tensor, int, float))
        or not _fits(const.shape if isinstance(const, Tensor) else (), a.c.shape[1:])
        or torch.result_type(a.c, const) != a.c.dtype  # add_ would not promote
    ):
        return _affine(a, const)
    try:
        a.c.select(0, 0).add_(const)
    except RuntimeError:
        return _affine(a, const)
    return a


def _value(v: object) -> object:
    return v.c[0] if isinstance(v, Jet) else v


def _wrap(out: object) -> object:
    if isinstance(out, Tensor):
        return Jet(out)
    if isinstance(out, (tuple, list)):
        return type(out)(_wrap(o) for o in out)
    return out


def _dim(d: int, rank: int) -> int:
    """``d`` normalized against a value of ``rank`` dims, then shifted past the coefficient axis."""
    return (d + rank if d < 0 else d) + 1


def _no_jets(ctx: Context, name: str, values: Sequence[object]) -> None:
    for v in values:
        leaves = v if isinstance(v, (list, tuple)) else (v,)
        if any(isinstance(leaf, Jet) for leaf in leaves):
            raise _unsupported(
                ctx, f"aten.{name} with an input-dependent argument other than the first"
            )


def _vmapped(
    op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    """Run ``op`` once per coefficient via ``vmap`` (the coefficient axis of every ``Jet``)."""
    dims = tuple(
        [0 if isinstance(x, Jet) else None for x in a]
        if isinstance(a, (list, tuple))
        else (0 if isinstance(a, Jet) else None)
        for a in args
    )
    plain = tuple(
        [x.c if isinstance(x, Jet) else x for x in a]
        if isinstance(a, (list, tuple))
        else (a.c if isinstance(a, Jet) else a)
        for a in args
    )

    def once(*xs: object) -> object:
        return op(*xs, **kwargs)

    return _wrap(torch.func.vmap(once, in_dims=dims)(*plain))


# ---------------------------------------------------------------- linear ops


@_rule(
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
    "mean",
    "sum",
)
def _linear_first(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    _no_jets(ctx, "op", args[1:])
    name = getattr(op, "__name__", "")
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
        shifted = [_dim(int(d), a.rank) for d in dims]
        keep = bool(args[2]) if len(args) > 2 else False
        return Jet(
            a.c.sum(shifted, keepdim=keep)
            if name.startswith("sum")
            else a.c.mean(shifted, keepdim=keep)
        )
    return _vmapped(op, args, kwargs)


@_rule("view", "_unsafe_view", "reshape")
def _view(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    a = args[0]
    assert isinstance(a, Jet)
    shape = args[1]
    assert isinstance(shape, (list, tuple))
    return _coefficientwise(a, lambda c: c.reshape(c.shape[0], *shape))


@_rule("expand")
def _expand(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    a = args[0]
    assert isinstance(a, Jet)
    sizes = args[1]
    assert isinstance(sizes, (list, tuple))
    return _coefficientwise(a, lambda c: _lift(c, len(sizes)).expand(c.shape[0], *sizes))


@_rule("permute")
def _permute(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    a = args[0]
    assert isinstance(a, Jet)
    dims = args[1]
    assert isinstance(dims, (list, tuple))
    order = [_dim(int(d), a.rank) for d in dims]
    return _coefficientwise(a, lambda c: c.permute(0, *order))


@_rule("t", "numpy_T")
def _t(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    a = args[0]
    assert isinstance(a, Jet)
    return a if a.rank < 2 else _coefficientwise(a, lambda c: c.transpose(1, 2))


@_rule("transpose")
def _transpose(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    a = args[0]
    assert isinstance(a, Jet)
    d0, d1 = args[1], args[2]
    assert isinstance(d0, int)
    assert isinstance(d1, int)
    d0, d1 = _dim(d0, a.rank), _dim(d1, a.rank)
    return _coefficientwise(a, lambda c: c.transpose(d0, d1))


@_rule("squeeze")
def _squeeze(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    a = args[0]
    assert isinstance(a, Jet)
    shape = a.split[0].shape if a.split is not None else a.c.shape[1:]
    given = args[1] if len(args) > 1 else range(a.rank)
    listed = given if isinstance(given, (list, tuple, range)) else [given]
    dims = [d for d in listed if isinstance(d, int)]
    shifted = tuple(_dim(d, a.rank) for d in dims if shape[d] == 1)
    return _coefficientwise(a, lambda c: c.squeeze(shifted) if shifted else c)


@_rule("unsqueeze")
def _unsqueeze(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    a = args[0]
    assert isinstance(a, Jet)
    d = args[1]
    assert isinstance(d, int)
    return _coefficientwise(a, lambda c: c.unsqueeze(_dim(d, a.rank + 1)))


@_rule("select")
def _select(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    a = args[0]
    assert isinstance(a, Jet)
    d, i = args[1], args[2]
    assert isinstance(d, int)
    assert isinstance(i, int)
    d = _dim(d, a.rank)
    return _coefficientwise(a, lambda c: c.select(d, i))


@_rule("slice")
def _slice(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    a = args[0]
    assert isinstance(a, Jet)
    d = args[1] if len(args) > 1 else 0
    assert isinstance(d, int)
    d = _dim(d, a.rank)
    return _coefficientwise(a, lambda c: torch.ops.aten.slice.Tensor(c, d, *args[2:]))


@_rule("clone", "alias", "contiguous", "lift_fresh_copy", "positive")
def _identity(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    return args[0]


@_rule("neg")
def _neg(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    a = args[0]
    assert isinstance(a, Jet)
    return _coefficientwise(a, torch.neg)


@_rule("detach")
def _detach(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    a = args[0]
    assert isinstance(a, Jet)
    return a.c[0].detach()


@_rule("cat", "stack")
def _join(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    parts = args[0]
    assert isinstance(parts, (list, tuple))
    like = next(p for p in parts if isinstance(p, Jet))
    rank = like.rank
    coefs = [_promote(ctx, p, like) for p in parts]
    d = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    assert isinstance(d, int)
    if getattr(op, "__name__", "").startswith("stack"):
        return Jet(torch.stack(coefs, _dim(d, rank + 1)))
    return Jet(torch.cat([c for c in coefs if c.dim() > 1 or c.shape[-1:] != (0,)], _dim(d, rank)))


# ---------------------------------------------------------------- affine and elementwise linear


@_rule("add", "sub")
def _add(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    a, b = args[0], args[1]
    alpha = kwargs.get("alpha", 1)
    assert isinstance(alpha, (int, float))
    sign = -1 if getattr(op, "__name__", "").startswith("sub") else 1
    scale = sign * alpha
    if isinstance(a, Jet) and isinstance(b, Jet):
        rank = max(a.rank, b.rank)
        bc = _lift(b.c, rank)
        return Jet(_lift(a.c, rank) + (bc if scale == 1 else bc * scale))
    if isinstance(a, Jet):
        const = b if scale == 1 else b * scale  # type: ignore[operator]
        return _affine_fresh(a, const) if id(a) in ctx.donated else _affine(a, const)
    assert isinstance(b, Jet)
    if scale == 1:
        return _affine_fresh(b, a) if id(b) in ctx.donated else _affine(b, a)
    return _affine_fresh(Jet(b.c * scale), a)  # a new tensor: add in place


@_rule("where")
def _where(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    cond, a, b = args[0], args[1], args[2]
    _no_jets(ctx, "where", [cond])
    assert isinstance(cond, Tensor)
    like = a if isinstance(a, Jet) else b
    assert isinstance(like, Jet)
    rank = max(cond.dim(), _rank_of(a), _rank_of(b))
    ac = _lift(_promote(ctx, a, like), rank)
    bc = _lift(_promote(ctx, b, like), rank)
    return Jet(torch.where(cond, ac, bc))


@_rule("masked_fill")
def _masked_fill(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    a, mask, value = args[0], args[1], args[2]
    assert isinstance(a, Jet)
    assert isinstance(mask, Tensor)
    _no_jets(ctx, "masked_fill", [value])
    head = a.c[0].masked_fill(mask, value)  # type: ignore[call-overload]  # a tensor or a number
    tail = _lift(a.c[1:], mask.dim()).masked_fill(mask, 0)
    return Jet(torch.cat([head.unsqueeze(0), tail]))


# ---------------------------------------------------------------- bilinear ops


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
            return _coefficientwise(a, lambda c: _repeated(c, lambda r: r @ b, -1))
        return _coefficientwise(a, lambda c: torch.matmul(c, b))
    assert isinstance(b, Jet)
    assert isinstance(a, Tensor)
    if name in ("mv", "dot"):
        at = a.transpose(-1, -2) if a.dim() == 2 else a
        return _coefficientwise(b, lambda c: torch.matmul(c, at))
    return _coefficientwise(b, lambda c: torch.matmul(a, c))


@_rule("mm", "bmm", "mv", "dot", "matmul")
def _mm(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    a, b = args[0], args[1]
    name = getattr(op, "__name__", "mm").split(".")[0]
    if isinstance(a, Jet) and isinstance(b, Jet):
        return Jet(ctx.algebra.product(lambda x, y: op(x, y), a.c, b.c, batched=False))  # type: ignore[arg-type, return-value]
    return _matmul_const(name, a, b)


@_rule("addmm", "addmv", "baddbmm")
def _addmm(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    bias, a, b = args[0], args[1], args[2]
    beta = kwargs.get("beta", 1)
    alpha = kwargs.get("alpha", 1)
    assert isinstance(beta, (int, float))
    assert isinstance(alpha, (int, float))
    name = getattr(op, "__name__", "addmm").split(".")[0]
    inner = {"addmm": torch.ops.aten.mm.default, "addmv": torch.ops.aten.mv.default}.get(
        name, torch.ops.aten.bmm.default
    )
    prod: object
    if isinstance(a, Jet) or isinstance(b, Jet):
        prod = _mm(ctx, inner, (a, b), {})
        if alpha != 1:
            assert isinstance(prod, Jet)
            prod = Jet(prod.c * alpha)
    else:
        prod = inner(a, b) * alpha
    if isinstance(prod, Jet) and isinstance(bias, Tensor):
        return _affine_fresh(prod, bias if beta == 1 else bias * beta)
    scaled_bias = bias
    if beta != 1:
        scaled_bias = Jet(bias.c * beta) if isinstance(bias, Jet) else bias * beta  # type: ignore[operator]
    return _add(ctx, torch.ops.aten.add.Tensor, (prod, scaled_bias), {})


@_rule("convolution")
def _convolution(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    x, w, bias = args[0], args[1], args[2]
    rest = args[3:]
    _no_jets(ctx, "convolution", [bias])
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
    return _affine_fresh(y, bias.reshape(-1, *([1] * (y.rank - 2))))


@_rule("mul")
def _mul(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    a, b = args[0], args[1]
    rank = max(_rank_of(a), _rank_of(b))
    if isinstance(a, Jet) and isinstance(b, Jet):
        return Jet(ctx.algebra.product(torch.mul, _lift(a.c, rank), _lift(b.c, rank), batched=True))
    if isinstance(a, Jet):
        return _coefficientwise(a, lambda c: _lift(c, rank) * b)  # type: ignore[operator]
    assert isinstance(b, Jet)
    return _coefficientwise(b, lambda c: a * _lift(c, rank))  # type: ignore[operator]


@_rule("div")
def _div(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    if kwargs.get("rounding_mode") is not None:
        raise _unsupported(ctx, "aten.div with rounding_mode (piecewise constant)")
    a, b = args[0], args[1]
    rank = max(_rank_of(a), _rank_of(b))
    if not isinstance(b, Jet):
        assert isinstance(a, Jet)
        return _coefficientwise(a, lambda c: _lift(c, rank) / b)  # type: ignore[operator]
    bc = _lift(b.c, rank)
    ac = _lift(_promote(ctx, a, b), rank)
    return Jet(ctx.algebra.divide(ac, bc))


# ---------------------------------------------------------------- smooth elementwise ops


def _unary(series_rule: UnaryRule) -> Rule:
    def rule(
        ctx: Context,
        op: Callable[..., object],
        args: tuple[object, ...],
        kwargs: Mapping[str, object],
    ) -> object:
        a = args[0]
        assert isinstance(a, Jet)
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
    RULES[_name] = _unary(_series_rule)

UNARY_OPS = frozenset(_UNARY)
"""Ops whose rule is the algebra's unary map (``Context.first`` reaches it)."""
ROW_WISE = frozenset(
    {
        *("view", "_unsafe_view", "reshape", "unsqueeze", "squeeze", "t", "transpose", "permute"),
        *("expand", "sum", "mean", "mm", "mv", "bmm", "dot", "matmul", "addmm", "addmv"),
        *("baddbmm", "add", "sub", "mul", "neg"),
    }
)
"""Ops whose rules, when only one argument carries coefficients, map each coefficient row on its
own and accept any number of rows (a jet whose first orders were left out passes through)."""
VIEWS = frozenset({"_unsafe_view"})
"""Ops whose rules may return a view of their argument although ATen's schema declares no alias
(``_unsafe_view``, as ``vmap``'s traces of a linear layer leave it)."""
ADDS_IN_PLACE = frozenset({"add", "sub"})
"""Ops whose rules add a constant to an argument given to them in place (``_add``)."""
FRESH_RESULTS = frozenset(
    {"mm", "bmm", "mv", "dot", "addmm", "addmv", "baddbmm", "convolution", "mul", "div", *_UNARY}
)
"""Ops whose rules always return new coefficients, never an argument's or a view of one: the
interpreter may hand such a result to a later rule to overwrite (``_interpret.donations``)."""


@_rule("pow")
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
        rank = max(_rank_of(base), e.rank)
        return Jet(ctx.algebra.unary(_series.exp, _lift(e.c, rank) * log_base))
    # base ** e = exp(e log(base)) for an input-dependent base (which must be positive)
    log_b = Jet(ctx.algebra.unary(_series.log, base.c))
    exponent = _mul(ctx, torch.ops.aten.mul.Tensor, (log_b, e), {})
    assert isinstance(exponent, Jet)
    return Jet(ctx.algebra.unary(_series.exp, exponent.c))


# ---------------------------------------------------------------- piecewise-linear ops


def _masked(ctx: Context, name: str, a: Jet, value: Tensor, slope: Tensor) -> Jet:
    ctx.piecewise.add(name)
    return Jet(torch.cat([value.unsqueeze(0), a.c[1:] * slope]))


@_rule("relu")
def _relu(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    a = args[0]
    assert isinstance(a, Jet)
    return _masked(ctx, "aten.relu", a, torch.relu(a.c[0]), (a.c[0] > 0).to(a.c.dtype))


@_rule("abs")
def _abs(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    a = args[0]
    assert isinstance(a, Jet)
    return _masked(ctx, "aten.abs", a, a.c[0].abs(), torch.sign(a.c[0]))


@_rule("leaky_relu")
def _leaky_relu(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    a = args[0]
    assert isinstance(a, Jet)
    slope = args[1] if len(args) > 1 else kwargs.get("negative_slope", 0.01)
    assert isinstance(slope, (int, float))
    factor = torch.full_like(a.c[0], slope).masked_fill(a.c[0] > 0, 1.0)
    return _masked(ctx, "aten.leaky_relu", a, a.c[0] * factor, factor)


@_rule("hardtanh", "clamp", "clamp_min", "clamp_max")
def _clamp(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    a = args[0]
    assert isinstance(a, Jet)
    name = getattr(op, "__name__", "clamp")
    _no_jets(ctx, name, args[1:])
    if any(isinstance(v, Tensor) for v in args[1:]):
        raise _unsupported(ctx, f"aten.{name} with tensor bounds")
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


@_rule("maximum", "minimum")
def _maximum(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    a, b = args[0], args[1]
    like = a if isinstance(a, Jet) else b
    assert isinstance(like, Jet)
    rank = max(_rank_of(a), _rank_of(b))
    ac = _lift(_promote(ctx, a, like), rank)
    bc = _lift(_promote(ctx, b, like), rank)
    name = getattr(op, "__name__", "maximum").split(".")[0]
    pick_a = ac[0] > bc[0] if name == "maximum" else ac[0] < bc[0]
    tie = ac[0] == bc[0]
    out = torch.where(tie, (ac + bc) / 2, torch.where(pick_a, ac, bc))
    ctx.piecewise.add(f"aten.{name}")
    return Jet(out)


def _gather_at(a: Jet, index: Tensor, d: int, keepdim: bool) -> Jet:
    idx = index.unsqueeze(0).expand(a.c.shape[0], *index.shape)
    out = torch.gather(a.c, d + 1, idx)
    return Jet(out if keepdim else out.squeeze(d + 1))


@_rule("amax", "amin", "max", "min")
def _extremum(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    a = args[0]
    if len(args) > 1 and isinstance(args[1], (Jet, Tensor)):  # max.other: elementwise
        return _maximum(
            ctx,
            torch.ops.aten.maximum.default
            if "max" in getattr(op, "__name__", "")
            else torch.ops.aten.minimum.default,
            args,
            kwargs,
        )
    assert isinstance(a, Jet)
    name = getattr(op, "__name__", "amax")
    largest = "max" in name.split(".")[0]
    arg = torch.argmax if largest else torch.argmin
    if not name.startswith("am"):
        ctx.piecewise.add(f"aten.{name.split('.')[0]}")
    dims = args[1] if len(args) > 1 else kwargs.get("dim", [])
    keep = bool(args[2]) if len(args) > 2 else bool(kwargs.get("keepdim", False))
    if a.rank == 0:  # the extremum of a number is that number
        return (a, torch.zeros((), dtype=torch.long)) if isinstance(dims, int) else a
    if isinstance(dims, int):
        d = _dim(dims, a.rank) - 1
        index = arg(a.c[0], d, keepdim=True)
        values = _gather_at(a, index, d, keep)
        return (values, index if keep else index.squeeze(d))
    assert isinstance(dims, (list, tuple))
    if len(dims) == 1:
        d = _dim(int(dims[0]), a.rank) - 1
        return _gather_at(a, arg(a.c[0], d, keepdim=True), d, keep)
    if len(dims) == 0 or len(dims) == a.rank:
        flat = Jet(a.c.reshape(a.c.shape[0], -1))
        out = _gather_at(flat, arg(flat.c[0]).reshape(1), 0, False)
        return Jet(out.c.reshape(out.c.shape[0], *([1] * a.rank))) if keep else out
    raise _unsupported(ctx, f"aten.{name} over several but not all dims")


# ---------------------------------------------------------------- locally constant results


@_rule(
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
    plain = tuple(
        [_value(x) for x in a] if isinstance(a, (list, tuple)) else _value(a) for a in args
    )
    return op(*plain, **kwargs)


@_rule("getitem")
def _getitem(
    ctx: Context, op: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> object:
    seq, i = args
    assert isinstance(seq, (list, tuple))
    assert isinstance(i, int)
    return seq[i]
