"""``hodfunc.imperative``: the seeds' autograd technique done right, with functional signatures."""

from __future__ import annotations

import torch
from helpers import assert_close, mlp, seeded
from torch import Tensor, nn

import hodfunc
from hodfunc import imperative

F64 = torch.float64


def test_notebook_values_and_vector_outputs() -> None:
    x = torch.tensor(-2.0)
    assert imperative.derivatives(lambda x: 2 * x**3, 4)(x).tolist() == [-16, 24, -24, 12, 0]

    def f(x: Tensor) -> Tensor:
        return torch.stack([x**2, x**3])

    d = imperative.derivatives(f, 3)(torch.tensor(2.0, dtype=F64))
    assert d.tolist() == [[4.0, 8.0], [4.0, 12.0], [2.0, 12.0], [0.0, 6.0]]
    assert imperative.derivative(f, 2)(torch.tensor(2.0, dtype=F64)).tolist() == [2.0, 12.0]


def test_functions_that_do_not_depend_on_x_give_zeros() -> None:
    def const(x: Tensor) -> Tensor:
        return torch.tensor(3.0, dtype=F64)

    x = torch.tensor(1.0, dtype=F64)
    assert imperative.derivatives(const, 2)(x).tolist() == [3.0, 0.0, 0.0]
    assert hodfunc.derivatives(const, 2)(x).tolist() == [3.0, 0.0, 0.0]
    assert imperative.partial(lambda v: v[0] ** 2, (1,))(torch.ones(2, dtype=F64)).item() == 0.0


def test_hessian_and_partial_with_argnums_and_vector_output() -> None:
    def f(a: Tensor, x: Tensor) -> Tensor:
        return torch.stack([(a * x**3).sum(), x.prod()])

    a, x = torch.tensor([1.0, 2.0], dtype=F64), torch.tensor([3.0, 4.0], dtype=F64)
    hess = imperative.hessian(f, argnums=1)(a, x)
    assert hess.shape == (2, 2, 2)
    assert_close(hess, hodfunc.hessian(f, argnums=1)(a, x))
    assert imperative.partial(f, (0, 1), argnums=-1)(a, x).tolist() == [0.0, 1.0]


def test_results_are_detached_and_work_under_no_grad() -> None:
    net = mlp(2, 8, 1, "tanh")

    def f(x: Tensor) -> Tensor:
        out: Tensor = net(x)
        return out.squeeze()

    x = torch.tensor([0.1, 0.2], dtype=F64)
    with torch.no_grad():
        hess = imperative.hessian(f)(x)
        d = imperative.partial(f, (0, 0, 1))(x)
    assert not hess.requires_grad
    assert not d.requires_grad
    assert_close(hess, hodfunc.hessian(f)(x))
    assert all(p.grad is None for p in net.parameters())


def test_per_sample_grads_loop_on_a_private_copy() -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    model[0].weight.requires_grad_(False)
    g = seeded(1)
    x, y = torch.randn(6, 3, dtype=F64, generator=g), torch.randn(6, 1, dtype=F64, generator=g)
    grads = imperative.per_sample_grads(model, nn.functional.mse_loss, x, y)
    assert set(grads) == {"0.bias", "2.weight", "2.bias"}
    for i in range(6):
        model.zero_grad(set_to_none=True)
        nn.functional.mse_loss(model(x[i : i + 1]), y[i : i + 1]).backward()  # type: ignore[no-untyped-call]
        for k, p in model.named_parameters():
            if p.requires_grad:
                assert p.grad is not None
                assert_close(grads[k][i], p.grad)
