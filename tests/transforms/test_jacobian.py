"""``jacobian``, ``hessian`` (with ``chunk_size``) and ``hvp``: torch.func and closed forms."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close, mlp, seeded
from torch import Tensor
from torch.func import grad, vmap

import hodfunc

F64 = torch.float64


def f_matrix(m: Tensor) -> Tensor:
    """A matrix-to-matrix function: shapes (2, 3) -> (3, 2)."""
    return torch.tanh(m.T @ m[:, :2]) + m.T[:, :2] ** 3


M = torch.randn(2, 3, dtype=F64, generator=seeded(0))


@pytest.mark.parametrize("chunk_size", [None, 1, 4])
def test_jacobian_matches_torch_func_and_keeps_shapes(chunk_size: int | None) -> None:
    jac = hodfunc.jacobian(f_matrix, chunk_size=chunk_size)(M)
    assert jac.shape == (3, 2, 2, 3)
    assert_close(jac, torch.func.jacrev(f_matrix)(M))
    assert_close(jac, torch.func.jacfwd(f_matrix)(M))


@pytest.mark.parametrize("chunk_size", [None, 1, 2, 5, 100])
def test_hessian_matches_torch_func_in_chunks(chunk_size: int | None) -> None:
    hess = hodfunc.hessian(f_matrix, chunk_size=chunk_size)(M)
    assert hess.shape == (3, 2, 2, 3, 2, 3)
    assert_close(hess, torch.func.hessian(f_matrix)(M))
    assert_close(hess, hess.permute(0, 1, 4, 5, 2, 3))  # symmetric


def test_hessian_closed_form() -> None:
    def f(x: Tensor) -> Tensor:
        return x[0] ** 2 * x[1] + torch.sin(x[2])

    x = torch.tensor([1.0, 2.0, 0.5], dtype=F64)
    expected = torch.tensor(
        [[4.0, 2.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, -torch.sin(torch.tensor(0.5)).item()]],
        dtype=F64,
    )
    assert_close(hodfunc.hessian(f)(x), expected, rtol=1e-7)


def test_hvp_is_hessian_times_v_and_vmaps_over_v() -> None:
    net = mlp(4, 8, 1, "gelu")

    def f(x: Tensor) -> Tensor:
        out: Tensor = net(x)
        return out.sum()

    x = torch.randn(4, dtype=F64, generator=seeded(1))
    vs = torch.randn(3, 4, dtype=F64, generator=seeded(2))
    hess = hodfunc.hessian(f)(x)
    assert_close(hodfunc.hvp(f)(x, vs[0]), hess @ vs[0])
    assert_close(vmap(hodfunc.hvp(f), in_dims=(None, 0))(x, vs), vs @ hess)


def test_argnums_selects_the_argument() -> None:
    def f(a: Tensor, x: Tensor) -> Tensor:
        return (a * x**3).sum()

    a, x = torch.tensor([1.0, 2.0], dtype=F64), torch.tensor([3.0, 4.0], dtype=F64)
    assert_close(hodfunc.jacobian(f, argnums=1)(a, x), a * 3 * x**2)
    assert_close(hodfunc.hessian(f, argnums=-1)(a, x), torch.diag(a * 6 * x))
    assert_close(hodfunc.hvp(f, argnums=1)(a, x, torch.ones(2, dtype=F64)), a * 6 * x)
    assert_close(hodfunc.hessian(f, argnums=0)(a, x), torch.zeros(2, 2, dtype=F64))


def test_compose_with_vmap_and_grad() -> None:
    def f(x: Tensor) -> Tensor:
        return torch.sin(x[0]) * torch.sin(x[1]) * torch.cos(x[2])

    xs = torch.randn(5, 3, dtype=F64, generator=seeded(3))
    assert_close(vmap(hodfunc.hessian(f))(xs), torch.stack([torch.func.hessian(f)(x) for x in xs]))
    assert_close(vmap(hodfunc.jacobian(f))(xs), vmap(grad(f))(xs))
    x = xs[0]
    # d/dx trace(H) = grad of the Laplacian
    assert_close(
        grad(lambda x: hodfunc.hessian(f)(x).trace())(x),
        hodfunc.jacobian(hodfunc.laplacian(f))(x),
    )
