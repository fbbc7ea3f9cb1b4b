"""``Call``: one call of a user's function, as a function of one argument."""

from __future__ import annotations

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
