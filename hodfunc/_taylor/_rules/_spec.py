"""What every Taylor rule shares: the ``Jet`` it works on, the ``Context`` of a propagation, and
the registry, where each rule is registered with its properties (``RuleSpec``) beside its code.

The interpreter (``_interpret``) and the planner (``_plan``) read those properties; nothing else
keeps a list of op names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from .._algebra import Algebra, join

__all__ = [
    "DECOMPOSE",
    "Context",
    "Jet",
    "Rule",
    "RuleSpec",
    "decompose",
    "has_rule",
    "keeps_affine",
    "lookup",
    "register",
    "rule",
    "spec_of",
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

    def parts(self) -> tuple[Tensor, Tensor]:
        """``(value, the next coefficients)``: the split if this jet is held so, else its
        coefficients split once. One split, not a select and a slice: their backwards would each
        zero-fill a gradient of the whole jet, the split's joins the pieces' gradients once."""
        if self._split is not None:
            return self._split
        first, tail = torch.split(self.c, [1, self._size - 1])
        return first.squeeze(0), tail

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
    name: str = ""
    """The current op's name (``"sum"``, ``"sub"``: no namespace, no overload; set by the
    interpreter), so a rule registered for several ops knows which one it runs."""
    overload: str = ""
    """The current op's overload (``"dim_IntList"``, ``"Tensor"``; set by the interpreter)."""


Rule = Callable[[Context, Callable[..., object], tuple[object, ...], Mapping[str, object]], object]
"""``rule(ctx, op, args, kwargs)``: ``op`` is the ATen overload (to run on plain values), its name
and overload are ``ctx.name`` and ``ctx.overload``; input-dependent arguments are ``Jet``s."""


@dataclass(frozen=True)
class RuleSpec:
    """What the interpreter and the planner may assume about a rule's result."""

    linear: Literal["", "all", "one", "numerator"] = ""
    """Linear in all its input-dependent arguments (``"all"``), in one of them when only one
    carries coefficients (``"one"``: products), or in the numerator only (``"numerator"``:
    ``div``). A linear op maps affine inputs (``Jet.affine``) to an affine result."""
    row_wise: bool = False
    """Maps each coefficient row on its own and accepts any number of rows when only one
    argument carries coefficients (a jet whose first orders were left out passes through)."""
    view: bool = False
    """May return a view of its argument although ATen's schema declares no alias
    (``_unsafe_view``, as ``vmap``'s traces of a linear layer leave it)."""
    adds_in_place: bool = False
    """Adds a constant to an argument given to it (``Context.donated``) in place."""
    fresh: bool = False
    """Always returns new coefficients, never an argument's or a view of one: the planner may
    hand such a result to a later rule to overwrite (``_plan``, ``Step.donated``)."""
    unary: bool = False
    """The algebra's unary map of an elementwise function (reads ``Context.first``)."""


_RULES: dict[str, Rule] = {}
_SPECS: dict[str, RuleSpec] = {}
_NONE = RuleSpec()
DECOMPOSE: list[torch._ops.OpOverloadPacket] = []
"""The ATen ops the trace lowers into others (``_trace``), declared by the family whose rules
handle what they become (``decompose``)."""


def register(name: str, rule: Rule, spec: RuleSpec) -> None:
    """Make ``rule`` the Taylor rule of the op named ``name``, with the properties ``spec``."""
    _RULES[name] = rule
    _SPECS[name] = spec


def rule(spec: RuleSpec, *names: str) -> Callable[[Rule], Rule]:
    """Register the decorated function as the rule of every op in ``names``, with ``spec``.
    Stack several for ops of one rule whose properties differ."""

    def registered(fn: Rule) -> Rule:
        for name in names:
            register(name, fn, spec)
        return fn

    return registered


def decompose(*ops: torch._ops.OpOverloadPacket) -> None:
    """Have the trace lower ``ops`` into the ops they are made of (``torch._decomp``)."""
    DECOMPOSE.extend(ops)


def has_rule(name: str) -> bool:
    """Whether the op named ``name`` (no namespace, no overload) has a Taylor rule.

    In-place ops (``add_``) have none on purpose: a rule returns a new value and would silently drop
    the mutation (a BatchNorm's running statistics, say), so they fall back to nested torch.func.
    """
    return name in _RULES


def lookup(name: str) -> Rule:
    """The rule of ``name``."""
    return _RULES[name]


def spec_of(name: str) -> RuleSpec:
    """The properties of ``name``'s rule (all false for an op without one)."""
    return _SPECS.get(name, _NONE)


def keeps_affine(name: str, args: tuple[object, ...], jets: list[Jet]) -> bool:
    """Whether op ``name`` maps affine inputs (``Jet.affine``) to an affine result."""
    if not jets or not all(j.affine for j in jets):
        return False
    linear = spec_of(name).linear
    if linear == "all":
        return True
    if linear == "one":
        return len(jets) == 1
    return linear == "numerator" and len(jets) == 1 and isinstance(args[0], Jet)
