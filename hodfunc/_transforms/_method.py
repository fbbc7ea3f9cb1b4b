"""The ``method=`` names and the ``Engine`` protocol every method implements.

No torch at import time: the command line reads the names before it imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Protocol, TypeGuard, get_args

if TYPE_CHECKING:
    from torch import Tensor

    from .._call import Call

Method = Literal["auto", "nested", "taylor", "compiled"]
"""The derivative methods: ``"nested"`` composes torch.func transforms; ``"taylor"`` propagates
truncated Taylor series on a traced graph (O(K^2) per op); ``"auto"`` uses Taylor mode where every
operation has a rule and falls back to nested with a ``FallbackWarning`` otherwise;
``"compiled"`` is Taylor mode with each propagation compiled by ``torch.compile``, and the one
method whose transforms work inside ``torch.compile(fullgraph=True)``."""

METHODS: tuple[Method, ...] = get_args(Method)


def available_methods() -> tuple[Method, ...]:
    """The names ``method=`` accepts."""
    return METHODS


def is_method(name: object) -> TypeGuard[Method]:
    """Whether ``name`` is one of ``METHODS``."""
    return isinstance(name, str) and name in METHODS


class Engine(Protocol):
    """How one method computes the primitive quantities every public transform is built from."""

    def jet(self, call: Call, v: Tensor, order: int, *, read: int = 1) -> Tensor:
        """``d^k/dt^k f(x + t v)`` at ``t = 0`` for ``k = 0..order``, stacked on dim 0.
        ``read``: the lowest order the caller reads (a ``RangeWarning`` names no lower one)."""
        ...

    def partial(self, call: Call, wrt: tuple[int, ...]) -> Tensor:
        """The mixed partial ``d^n f / dx[wrt[0]] ... dx[wrt[n-1]]`` (flat indices into ``x``)."""
        ...

    def partials(self, call: Call, terms: tuple[tuple[int, ...], ...]) -> tuple[Tensor, ...]:
        """The partial of every ``wrt`` tuple in ``terms``, sharing what the method can share."""
        ...

    def laplacian(self, call: Call) -> Tensor:
        """``sum_i d^2 f / dx_i^2`` over every coordinate of ``x``."""
        ...

    def collapsed(
        self,
        call: Call,
        directions: Tensor,
        form: Tensor | tuple[int, int, int] | None,
        *,
        first: bool,
    ) -> Tensor:
        """One propagation over ``directions`` (``(n, *x.shape)``): the value, then
        ``sum_kl G_kl d^2 f[v_k, v_l]`` (``G``: ``form``, the identity for ``None``, a diagonal
        for a vector, ``diag(+1 x plus, -1 x minus, 0 x free)`` for counts), then (``first``)
        the first orders ``d f[v_k]``, stacked on dim 0."""
        ...
