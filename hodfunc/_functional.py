"""Refusing functions that are not functions of their tensors: every method checks the same things.

A derivative is only defined for a function of its arguments. Three things break that silently:

- reading a value that depends on the free argument into Python (``.item()``, ``float(y)``,
  ``y.tolist()``, ``if y > 0``): nested ``torch.func`` treats the number as a constant and returns
  a wrong derivative, and a trace cannot see through it;
- drawing random numbers (``torch.rand``, ``Dropout`` in training mode): each evaluation is a
  different function.

Taylor mode finds them in its trace (``aten._local_scalar_dense`` on the input's path, random
ATen ops). The nested method runs the function under ``guard``, a ``TorchFunctionMode`` that sees
every torch call, follows which tensors depend on the input and refuses these on them; a value
read from a weight or a constant is fine. Both raise
``NonFunctionalError``, which ``method="auto"`` never turns into a fallback.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch import Tensor
from torch.overrides import TorchFunctionMode

from ._errors import NonFunctionalError, message

__all__ = ["RANDOM_ATEN", "Guard", "guard", "random_error", "scalar_read_error"]

_SCALAR_READS = frozenset(
    {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "__complex__", "numpy"}
)
_RANDOM = frozenset(
    {
        "rand",
        "rand_like",
        "randn",
        "randn_like",
        "randint",
        "randint_like",
        "randperm",
        "bernoulli",
        "bernoulli_",
        "normal",
        "normal_",
        "uniform_",
        "exponential_",
        "geometric_",
        "cauchy_",
        "log_normal_",
        "random_",
        "multinomial",
        "poisson",
    }
)
_DROPOUT = frozenset(
    {
        "dropout",
        "dropout1d",
        "dropout2d",
        "dropout3d",
        "alpha_dropout",
        "feature_alpha_dropout",
        "rrelu",
        "rrelu_",
    }
)
"""Random only in training mode: ``(input, p, training)`` (``rrelu``: ``training`` defaults to
``False``)."""

RANDOM_ATEN = frozenset(
    {name.rstrip("_") for name in _RANDOM}
    | {"native_dropout", "rrelu_with_noise", "normal_functional", "_fused_dropout", "dropout"}
)
"""Names of the ATen ops (without overload, trailing ``_`` stripped) that draw random numbers."""


def scalar_read_error(api: str, what: str) -> NonFunctionalError:
    """The error for a value of the input's path read into Python."""
    return NonFunctionalError(
        message(
            api,
            "a derivative needs a function of its tensors, but the function reads a value that "
            "depends on the input into Python, where no method can follow it (nested torch.func "
            "would treat it as a constant and return a wrong derivative)",
            what,
            "Keep it a tensor: drop .item() and float(), and write a branch as "
            "torch.where(cond, a, b).",
        ),
        (what,),
    )


def random_error(api: str, what: str) -> NonFunctionalError:
    """The error for a random draw inside the function."""
    return NonFunctionalError(
        message(
            api,
            "a derivative needs a function of its tensors, but the function draws random numbers, "
            "so every evaluation is a different function",
            what,
            "Draw the noise outside and pass it as an argument; for Dropout call model.eval().",
        ),
        (what,),
    )


def _dropout_is_random(name: str, args: tuple[object, ...], kwargs: dict[str, object]) -> bool:
    default = name not in ("rrelu", "rrelu_")
    if name in ("rrelu", "rrelu_"):
        training = kwargs.get("training", args[3] if len(args) > 3 else default)
        return bool(training)
    training = kwargs.get("training", args[2] if len(args) > 2 else default)
    p = kwargs.get("p", args[1] if len(args) > 1 else 0.5)
    return bool(training) and p != 0


def _tensors(value: object) -> Iterator[Tensor]:
    """The tensors among ``value`` and the items of a list or tuple ``value``."""
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            if isinstance(item, Tensor):
                yield item


class Guard(TorchFunctionMode):
    """Watches every torch call while a method evaluates the function: a tensor computed from a
    *tainted* one (the free argument, ``taint``) is tainted too, and reading a tainted tensor into
    Python, or any random draw, raises ``NonFunctionalError``.

    Taint is followed through torch calls, not through levels: inside ``torch.func`` transforms
    every tensor is wrapped, whether it depends on the input or not.
    """

    def __init__(self, api: str) -> None:
        super().__init__()
        self.api = api
        self.tainted: dict[int, weakref.ref[Tensor]] = {}
        """By ``id``, with a weak reference that tells a live tensor from a reused id (tensors
        compare elementwise, so they cannot sit in a ``WeakSet``)."""

    def taint(self, x: Tensor) -> Tensor:
        self.tainted[id(x)] = weakref.ref(x)
        return x

    def depends(self, t: Tensor) -> bool:
        ref = self.tainted.get(id(t))
        return ref is not None and ref() is t

    def __torch_function__(
        self,
        func: Callable[..., object],
        types: object,
        args: tuple[object, ...] = (),
        kwargs: dict[str, object] | None = None,
    ) -> object:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        depends = any(self.depends(t) for arg in args for t in _tensors(arg))
        if depends and name in _SCALAR_READS:
            raise scalar_read_error(self.api, f"Tensor.{name} on a tensor of the input's path")
        if name in _RANDOM or (name in _DROPOUT and _dropout_is_random(name, args, kwargs)):
            raise random_error(self.api, f"torch {name}")
        out = func(*args, **kwargs)
        if depends:
            for t in _tensors(out):
                self.taint(t)
        return out


@contextmanager
def guard(api: str) -> Iterator[Guard]:
    """Run a method's evaluation of the user's function under a ``Guard``; the method taints the
    free argument where it calls the function (module docstring)."""
    with Guard(api) as watching:
        yield watching
