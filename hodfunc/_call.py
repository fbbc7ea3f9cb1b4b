"""``Call``: one call of a user's function, as a function of one argument."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import Tensor

from ._validate import check_output, select_arg


@dataclass(frozen=True)
class Call:
    """The user's ``fn(*args, **kwargs)`` with ``args[argnum]`` free and everything else held fixed.

    Engines only see a ``Call``: they evaluate ``at(x)`` at points of their choosing. Tensors held
    fixed stay attached to autograd, so results remain differentiable with respect to them.
    """

    api: str
    fn: Callable[..., object]
    args: tuple[object, ...]
    kwargs: Mapping[str, object]
    argnum: int

    @staticmethod
    def bind(
        api: str,
        fn: Callable[..., object],
        args: tuple[object, ...],
        kwargs: Mapping[str, object],
        argnums: int,
    ) -> Call:
        """Validate ``argnums`` against ``args`` and build the ``Call``."""
        argnum, _ = select_arg(api, args, argnums)
        return Call(api, fn, args, kwargs, argnum)

    @property
    def x(self) -> Tensor:
        """The point of differentiation."""
        x = self.args[self.argnum]
        assert isinstance(x, Tensor)
        return x

    def at(self, x: Tensor) -> Tensor:
        """Evaluate the function with the free argument replaced by ``x``."""
        args = (*self.args[: self.argnum], x, *self.args[self.argnum + 1 :])
        return check_output(self.api, self.fn(*args, **self.kwargs))


def append_parameter(wrapper: Callable[..., object], f: Callable[..., object], name: str) -> None:
    """Make ``inspect.signature(wrapper)`` show ``f``'s parameters plus a trailing ``name``.

    For transforms that return ``g(*args, v)``: ``functools.wraps`` alone would show ``f``'s.
    """
    try:
        sig = inspect.signature(f)
    except (TypeError, ValueError):  # builtins without a signature: leave wraps' answer
        return
    params = [p for p in sig.parameters.values() if p.kind <= p.POSITIONAL_OR_KEYWORD]
    params.append(inspect.Parameter(name, inspect.Parameter.POSITIONAL_ONLY))
    params = [p.replace(kind=inspect.Parameter.POSITIONAL_ONLY) for p in params]
    wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
