"""The ``method=`` dispatch: each method is an ``Engine`` registered under its name.

A transform resolves its method once, when it is built, and gets a fresh engine instance that may
keep per-transform state (caches, warn-once flags). A new method registers a factory here; no
transform changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol

from torch import Tensor

from ._call import Call
from ._errors import ArgumentError, message

Method = Literal["auto", "nested", "taylor"]
"""The derivative methods: ``"nested"`` composes torch.func transforms; ``"taylor"`` propagates
truncated Taylor series on a traced graph (O(K^2) per op); ``"auto"`` uses Taylor mode where every
operation has a rule and falls back to nested with a ``FallbackWarning`` otherwise."""


class Engine(Protocol):
    """How one method computes the primitive quantities every public transform is built from."""

    def jet(self, call: Call, v: Tensor, order: int) -> Tensor:
        """``d^k/dt^k f(x + t v)`` at ``t = 0`` for ``k = 0..order``, stacked on dim 0."""
        ...

    def partial(self, call: Call, wrt: tuple[int, ...]) -> Tensor:
        """The mixed partial ``d^n f / dx[wrt[0]] ... dx[wrt[n-1]]`` (flat indices into ``x``)."""
        ...

    def laplacian(self, call: Call) -> Tensor:
        """``sum_i d^2 f / dx_i^2`` over every coordinate of ``x``."""
        ...


EngineFactory = Callable[[], Engine]
_REGISTRY: dict[str, EngineFactory] = {}


def register(name: str, factory: EngineFactory) -> None:
    """Make ``method=name`` available to every transform."""
    _REGISTRY[name] = factory


def _builtin() -> dict[str, EngineFactory]:
    """The registry with the built-in methods in it (``_engines`` registers them on import)."""
    from . import _engines  # noqa: F401  (registers "nested", "taylor", "auto")

    return _REGISTRY


def available_methods() -> tuple[str, ...]:
    """The names ``method=`` accepts now, in registration order."""
    return tuple(_builtin())


def resolve(api: str, method: object) -> Engine:
    """Return a fresh engine for ``method`` or raise naming the accepted methods."""
    if not isinstance(method, str) or method not in _builtin():
        raise ArgumentError(
            message(
                api,
                f"method must be one of {sorted(_REGISTRY)}",
                repr(method),
                'Use method="auto" unless you need a specific one.',
            )
        )
    return _REGISTRY[method]()
