"""The imperative adapter: hodfunc's API computed the way the seed documents write autograd code.

Each function has the signature and meaning of its functional twin in ``hodfunc``, but runs on
``torch.autograd.grad(..., create_graph=True)`` chains, ``.backward()`` and reading ``.grad``, done
right: ``.grad`` is reset before every read, and everything runs on private clones, so nothing the
caller owns (tensors, ``.grad``, ``requires_grad``, parameters, RNG state) changes. Results are
detached. This is the path users migrate *from*; the equivalence suite holds it equal to the
functional one.

>>> import torch
>>> from hodfunc import imperative
>>> imperative.derivatives(lambda x: 2 * x**3, order=4)(torch.tensor(-2.0))
tensor([-16.,  24., -24.,  12.,   0.])
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec

import torch
from torch import Tensor, nn

from ._per_sample._grads import LossFn, check_batch, check_per_sample_module
from ._per_sample._norms import check_max_norm
from ._validate import (
    check_argnums,
    check_callable,
    check_chunk_size,
    check_order,
    check_output,
    check_scalar_arg,
    check_wrt,
    check_wrt_range,
    select_arg,
    warn_precision,
)

__all__ = [
    "clipped_grad_sum",
    "derivative",
    "derivatives",
    "hessian",
    "partial",
    "per_sample_grad_norms",
    "per_sample_grads",
]

P = ParamSpec("P")


@contextmanager
def _private_leaf(
    api: str, args: tuple[object, ...], argnums: int
) -> Iterator[tuple[Tensor, tuple[object, ...]]]:
    """Yield a private leaf clone of the differentiated argument and the argument tuple using it."""
    index, x = select_arg(api, args, argnums)
    leaf = x.detach().clone().requires_grad_(True)
    with torch.enable_grad(), torch.random.fork_rng(devices=[]):
        yield leaf, (*args[:index], leaf, *args[index + 1 :])


def backward(y: Tensor, *, retain_graph: bool = False, create_graph: bool = False) -> None:
    """``y.backward(...)``, typed: torch leaves ``Tensor.backward`` unannotated."""
    y.backward(retain_graph=retain_graph, create_graph=create_graph)  # type: ignore[no-untyped-call]


def _grad(y: Tensor, x: Tensor) -> Tensor:
    """``dy/dx`` with the graph kept for the next order; zeros if ``y`` does not depend on ``x``."""
    if not y.requires_grad:
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad(y, x, create_graph=True, allow_unused=True)
    return torch.zeros_like(x) if g is None else g


def _backward_read(y: Tensor, x: Tensor) -> Tensor:
    """The seeds' last step: ``y.backward()`` and read ``x.grad``, resetting it first and after."""
    x.grad = None
    if not y.requires_grad:
        return torch.zeros_like(x)
    # inputs=(x,): accumulate into the private leaf only, never into the caller's parameters or
    # tensors that y also depends on.
    torch.autograd.backward(y, inputs=(x,), retain_graph=True)
    g = torch.zeros_like(x) if x.grad is None else x.grad.detach().clone()
    x.grad = None
    return g


def _elementwise(step: Callable[[Tensor, Tensor], Tensor], y: Tensor, x: Tensor) -> Tensor:
    """Apply ``step`` to every element of ``y`` (autograd differentiates one scalar at a time)."""
    parts = [step(yi, x) for yi in y.reshape(-1)]
    if not parts:
        return y.new_zeros((*y.shape, *x.shape))
    return torch.stack(parts).reshape((*y.shape, *x.shape))


def _chain(y: Tensor, x: Tensor, order: int) -> Tensor:
    """``y`` and its derivatives of orders ``1..order`` with respect to ``x``, stacked, detached."""
    out = [y.detach()]
    for k in range(1, order + 1):
        step = _backward_read if k == order else _grad
        y = _elementwise(step, y, x)
        out.append(y.detach())
    return torch.stack(out)


def _chained(
    api: str, f: Callable[P, Tensor], order: int, argnums: int, *, only_top: bool
) -> Callable[P, Tensor]:
    """``derivatives`` (orders ``0..order``, stacked) or, ``only_top``, ``derivative``."""
    check_callable(api, f)
    check_order(api, order)
    check_argnums(api, argnums)

    fn: Callable[..., object] = f

    @functools.wraps(f)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> Tensor:
        with _private_leaf(api, args, argnums) as (x, call_args):
            check_scalar_arg(api, x)
            warn_precision(api, x, order)
            orders = _chain(check_output(api, fn(*call_args, **kwargs)), x, order)
            return orders[order] if only_top else orders

    return wrapped


def derivatives(f: Callable[P, Tensor], order: int, *, argnums: int = 0) -> Callable[P, Tensor]:
    """Twin of ``hodfunc.derivatives``: orders ``0..order``, shape ``(order+1, *out)``."""
    return _chained("hodfunc.imperative.derivatives", f, order, argnums, only_top=False)


def derivative(f: Callable[P, Tensor], order: int = 1, *, argnums: int = 0) -> Callable[P, Tensor]:
    """Imperative twin of ``hodfunc.derivative``: ``create_graph`` chain, then ``.backward()``.

    >>> import torch
    >>> from hodfunc import imperative
    >>> imperative.derivative(lambda x: x**2, order=2)(torch.tensor(3.0))
    tensor(2.)
    """
    return _chained("hodfunc.imperative.derivative", f, order, argnums, only_top=True)


def partial(
    f: Callable[P, Tensor], wrt: tuple[int, ...] | list[int], *, argnums: int = 0
) -> Callable[P, Tensor]:
    """Imperative twin of ``hodfunc.partial``: ``autograd.grad`` per index, then ``.backward()``."""
    api = "hodfunc.imperative.partial"
    check_callable(api, f)
    indices = check_wrt(api, wrt)
    check_argnums(api, argnums)

    fn: Callable[..., object] = f

    @functools.wraps(f)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> Tensor:
        with _private_leaf(api, args, argnums) as (x, call_args):
            check_wrt_range(api, indices, x)
            warn_precision(api, x, len(indices))
            y = check_output(api, fn(*call_args, **kwargs))
            for k, i in enumerate(indices):
                step = _backward_read if k == len(indices) - 1 else _grad
                y = _elementwise(step, y, x).reshape(*y.shape, -1)[..., i]
            return y.detach()

    return wrapped


def hessian(
    f: Callable[P, Tensor], *, argnums: int = 0, chunk_size: int | None = None
) -> Callable[P, Tensor]:
    """Imperative twin of ``hodfunc.hessian``: rows by ``grad[i].backward()``, resetting ``.grad``.

    ``chunk_size`` is accepted for signature parity; rows are computed one at a time anyway.

    >>> import torch
    >>> from hodfunc import imperative
    >>> imperative.hessian(lambda x: x[0] ** 2 * x[1])(torch.tensor([1.0, 2.0]))
    tensor([[4., 2.],
            [2., 0.]])
    """
    api = "hodfunc.imperative.hessian"
    check_callable(api, f)
    check_argnums(api, argnums)
    check_chunk_size(api, chunk_size)

    fn: Callable[..., object] = f

    @functools.wraps(f)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> Tensor:
        with _private_leaf(api, args, argnums) as (x, call_args):
            warn_precision(api, x, 2)
            y = check_output(api, fn(*call_args, **kwargs))
            g = _elementwise(_grad, y, x)
            return _elementwise(_backward_read, g, x).detach()

    return wrapped


def per_sample_grads(
    model: nn.Module, loss_fn: LossFn, *batch: Tensor, chunk_size: int | None = None
) -> dict[str, Tensor]:
    """Imperative twin of ``hodfunc.per_sample_grads``: a loop of one-sample ``loss.backward()``.

    Runs on a deep copy of ``model``; ``chunk_size`` is accepted for signature parity.

    >>> import torch
    >>> from hodfunc import imperative
    >>> model = torch.nn.Linear(3, 1)
    >>> x, y = torch.randn(4, 3), torch.randn(4, 1)
    >>> imperative.per_sample_grads(model, torch.nn.functional.mse_loss, x, y)["bias"].shape
    torch.Size([4, 1])
    """
    api = "hodfunc.imperative.per_sample_grads"
    check_chunk_size(api, chunk_size)
    check_per_sample_module(api, model, loss_fn)
    size = check_batch(api, batch)
    batch = tuple(b.detach() for b in batch)  # backward must not reach the caller's tensors
    private = copy.deepcopy(model)
    named = [(k, p) for k, p in private.named_parameters() if p.requires_grad]
    rows: dict[str, list[Tensor]] = {k: [] for k, _ in named}
    with torch.enable_grad(), torch.random.fork_rng(devices=[]):
        for i in range(size):
            private.zero_grad(set_to_none=True)
            out = private(batch[0][i : i + 1])
            loss = check_output(api, loss_fn(out, *(b[i : i + 1] for b in batch[1:])))
            if loss.requires_grad:  # False when every parameter is frozen
                backward(loss)
            for k, p in named:
                rows[k].append(torch.zeros_like(p) if p.grad is None else p.grad.detach().clone())
    return {k: torch.stack(v) for k, v in rows.items()}


def per_sample_grad_norms(
    model: nn.Module, loss_fn: LossFn, *batch: Tensor, chunk_size: int | None = None
) -> Tensor:
    """Imperative twin of ``hodfunc.per_sample_grad_norms``: norms of the one-sample loop's grads.

    >>> import torch
    >>> from hodfunc import imperative
    >>> model = torch.nn.Linear(2, 1, bias=False)
    >>> _ = model.weight.data.fill_(1.0)
    >>> x, y = torch.tensor([[3.0, 4.0], [0.0, 1.0]]), torch.zeros(2, 1)
    >>> imperative.per_sample_grad_norms(model, torch.nn.functional.mse_loss, x, y)
    tensor([70.,  2.])
    """
    api = "hodfunc.imperative.per_sample_grad_norms"
    check_per_sample_module(api, model, loss_fn)
    size = check_batch(api, batch)
    grads = per_sample_grads(model, loss_fn, *batch, chunk_size=chunk_size)
    squares = [g.reshape(size, -1).square().sum(1) for g in grads.values()]
    return torch.stack(squares).sum(0).sqrt() if squares else batch[0].new_zeros(size)


def clipped_grad_sum(
    model: nn.Module, loss_fn: LossFn, *batch: Tensor, max_norm: float
) -> dict[str, Tensor]:
    """Imperative twin of ``hodfunc.clipped_grad_sum``: per sample ``.backward()``, clip, add.

    >>> import torch
    >>> from hodfunc import imperative
    >>> model = torch.nn.Linear(2, 1, bias=False)
    >>> _ = model.weight.data.fill_(1.0)
    >>> x, y = torch.tensor([[3.0, 4.0], [0.0, 1.0]]), torch.zeros(2, 1)
    >>> imperative.clipped_grad_sum(model, torch.nn.functional.mse_loss, x, y, max_norm=1.0)
    {'weight': tensor([[0.6000, 1.8000]])}
    """
    api = "hodfunc.imperative.clipped_grad_sum"
    clip = check_max_norm(api, max_norm)
    check_per_sample_module(api, model, loss_fn)
    check_batch(api, batch)
    grads = per_sample_grads(model, loss_fn, *batch)
    total = {k: torch.zeros_like(g[0]) for k, g in grads.items()}
    for i in range(batch[0].shape[0]):
        norm = torch.stack([g[i].square().sum() for g in grads.values()]).sum().sqrt()
        scale = min(1.0, clip / float(norm)) if float(norm) > 0 else 1.0
        for k, g in grads.items():
            total[k] += scale * g[i]
    return total
