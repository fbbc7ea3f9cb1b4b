"""``derivative``, ``derivatives``, ``partial``, ``directional_derivative``, ``laplacian`` and
``derivative_tensor``: closed forms, shapes, ``argnums``, signatures, and composition with
``torch.func.vmap``, ``torch.func.grad`` and each other. Every engine-dispatched case runs under
every registered method.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import pytest
import torch
from helpers import METHODS, assert_close, mlp, seeded
from torch import Tensor
from torch.func import grad, jvp, vmap

import hodfunc
from hodfunc import Method, imperative

F64 = torch.float64


def x64(*values: float) -> Tensor:
    t = torch.tensor(values, dtype=F64)
    return t.reshape(()) if len(values) == 1 else t


@pytest.mark.parametrize("method", METHODS)
def test_sin_derivatives_are_shifted_sines(method: Method) -> None:
    x = x64(0.7)
    expected = torch.stack([torch.sin(x + k * math.pi / 2) for k in range(7)])
    assert_close(hodfunc.derivatives(torch.sin, 6, method=method)(x), expected)
    for k in range(7):
        assert_close(hodfunc.derivative(torch.sin, k, method=method)(x), expected[k])


@pytest.mark.parametrize("method", METHODS)
def test_output_shape_is_kept(method: Method) -> None:
    def f(x: Tensor) -> Tensor:
        return torch.stack(
            [torch.stack([x, x**2, x**3]), torch.stack([x.exp(), x.sin(), 1 + 0 * x])]
        )

    x = x64(0.5)
    d = hodfunc.derivatives(f, 3, method=method)(x)
    assert d.shape == (4, 2, 3)
    one = torch.ones((), dtype=F64)
    assert_close(d[:, 0, 2], torch.stack([x**3, 3 * x**2, 6 * x, 6 * one]))
    assert_close(d[3, 1], torch.stack([x.exp(), -torch.cos(x), 0 * x]))
    assert hodfunc.derivative(f, 2, method=method)(x).shape == (2, 3)


@pytest.mark.parametrize("method", METHODS)
def test_argnums_and_kwargs(method: Method) -> None:
    def f(a: Tensor, x: Tensor, *, scale: float = 1.0) -> Tensor:
        return scale * a * x**4

    a, x = x64(3.0), x64(2.0)
    for argnums in (1, -1):
        d2 = hodfunc.derivative(f, 2, argnums=argnums, method=method)
        assert d2(a, x, scale=0.5).item() == 0.5 * 3.0 * 12 * 2.0**2
    assert hodfunc.derivative(f, 1, argnums=0, method=method)(a, x).item() == 16.0
    xv = x64(1.0, 2.0)
    g = hodfunc.partial(lambda a, x: (a * x**3).sum(), (1, 1), argnums=1, method=method)
    assert g(a, xv).item() == 3.0 * 6 * 2.0


@pytest.mark.parametrize("method", METHODS)
def test_partial_closed_forms(method: Method) -> None:
    def f(x: Tensor) -> Tensor:
        return x[0] ** 2 * x[1] ** 3 * torch.exp(x[2])

    x = x64(1.5, -0.5, 0.25)
    e = math.exp(0.25)
    cases = {
        (): 1.5**2 * (-0.5) ** 3 * e,
        (0,): 2 * 1.5 * (-0.5) ** 3 * e,
        (0, 1): 2 * 1.5 * 3 * 0.25 * e,
        (1, 0): 2 * 1.5 * 3 * 0.25 * e,
        (0, 0, 1, 1): 2 * 6 * -0.5 * e,
        (2, 2, 2, 2): 1.5**2 * (-0.5) ** 3 * e,
        (0, 0, 0): 0.0,
    }
    for wrt, value in cases.items():
        got = hodfunc.partial(f, wrt, method=method)(x).item()
        assert got == pytest.approx(value, rel=1e-12, abs=1e-12), wrt


@pytest.mark.parametrize("method", METHODS)
def test_partial_indexes_a_matrix_argument_flat(method: Method) -> None:
    def f(m: Tensor) -> Tensor:
        return (m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]) * m[1, 1]  # (ad - bc) d

    m = x64(1.0, 2.0, 3.0, 4.0).reshape(2, 2)
    # d2/dm[0,0] dm[1,1] = 2 d; d2/dm[0,1] dm[1,0] = -d
    assert hodfunc.partial(f, (0, 3), method=method)(m).item() == pytest.approx(8.0)
    assert hodfunc.partial(f, (1, 2), method=method)(m).item() == pytest.approx(-4.0)


@pytest.mark.parametrize("method", METHODS)
def test_directional_derivative_is_jvp_then_vHv(method: Method) -> None:
    net = mlp(3, 8, 1, "tanh")

    def f(x: Tensor) -> Tensor:
        out: Tensor = net(x)
        return out.squeeze(-1)

    x = torch.randn(3, dtype=F64, generator=seeded(0))
    v = torch.randn(3, dtype=F64, generator=seeded(1))
    assert_close(hodfunc.directional_derivative(f, 0, method=method)(x, v), f(x))
    assert_close(hodfunc.directional_derivative(f, 1, method=method)(x, v), jvp(f, (x,), (v,))[1])
    hess = hodfunc.hessian(f)(x)
    assert_close(hodfunc.directional_derivative(f, 2, method=method)(x, v), v @ hess @ v)


@pytest.mark.parametrize("method", METHODS)
def test_directional_derivative_matches_finite_differences(method: Method) -> None:
    net = mlp(3, 8, 1, "softplus")

    def f(x: Tensor) -> Tensor:
        out: Tensor = net(x)
        return out.squeeze(-1)

    x = torch.randn(3, dtype=F64, generator=seeded(2))
    v = torch.randn(3, dtype=F64, generator=seeded(3))
    h = 1e-3
    line = [f(x + k * h * v) for k in (-2, -1, 0, 1, 2)]
    first = (line[0] - 8 * line[1] + 8 * line[3] - line[4]) / (12 * h)
    second = (-line[0] + 16 * line[1] - 30 * line[2] + 16 * line[3] - line[4]) / (12 * h**2)
    assert_close(hodfunc.directional_derivative(f, 1, method=method)(x, v), first, rtol=1e-9)
    assert_close(hodfunc.directional_derivative(f, 2, method=method)(x, v), second, rtol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_laplacian_elementwise_over_outputs(method: Method) -> None:
    def f(x: Tensor) -> Tensor:
        return torch.stack([(x**2).sum(), x[0] * x[1] * x[2], torch.sin(x).sum()])

    x = x64(0.3, -1.2, 2.0)
    expected = torch.stack([6 * torch.ones((), dtype=F64), 0 * x[0], -torch.sin(x).sum()])
    assert_close(hodfunc.laplacian(f, method=method)(x), expected)
    assert_close(hodfunc.laplacian(f, method=method)(x)[2], hodfunc.hessian(f)(x)[2].trace())


def test_derivative_tensor_shapes_and_low_orders() -> None:
    def f(m: Tensor) -> Tensor:
        return torch.stack([(m**3).sum(), m.prod()])

    m = x64(0.5, 1.5, -1.0, 2.0, 0.25, 1.0).reshape(2, 3)
    assert_close(hodfunc.derivative_tensor(f, 0)(m), f(m))
    assert_close(hodfunc.derivative_tensor(f, 1)(m), hodfunc.jacobian(f)(m))
    assert_close(hodfunc.derivative_tensor(f, 2)(m), hodfunc.hessian(f)(m))
    t3 = hodfunc.derivative_tensor(f, 3)(m)
    assert t3.shape == (2, 2, 3, 2, 3, 2, 3)
    assert t3[0, 1, 2, 1, 2, 1, 2].item() == 6.0  # d3 sum(m^3) / dm[1,2]^3
    assert t3[0, 0, 0, 0, 1, 0, 0].item() == 0.0
    assert torch.equal(t3, t3.permute(0, 3, 4, 1, 2, 5, 6))  # symmetric in its indices


# ---------------------------------------------------------------------------------------------
# Composition


@pytest.mark.parametrize("method", METHODS)
def test_composes_with_vmap(method: Method) -> None:
    xs = torch.linspace(-1, 1, 5, dtype=F64)
    d3 = hodfunc.derivative(torch.tanh, 3, method=method)
    assert_close(vmap(d3)(xs), torch.stack([d3(x) for x in xs]))

    def f(x: Tensor) -> Tensor:
        return (torch.sin(x) * x).sum()

    pts = torch.randn(4, 3, dtype=F64, generator=seeded(4))
    for transform in (
        hodfunc.partial(f, (0, 1, 1), method=method),
        hodfunc.laplacian(f, method=method),
        hodfunc.derivative_tensor(f, 2),
    ):
        assert_close(vmap(transform)(pts), torch.stack([transform(p) for p in pts]))
    dd = hodfunc.directional_derivative(f, 2, method=method)
    expected = torch.stack([dd(p, q) for p, q in zip(pts, pts.flip(0), strict=True)])
    assert_close(vmap(dd)(pts, pts.flip(0)), expected)


@pytest.mark.parametrize("method", METHODS)
def test_composes_with_grad_and_itself(method: Method) -> None:
    def f(x: Tensor) -> Tensor:
        return torch.exp(torch.sin(x))

    def d(k: int) -> Callable[[Tensor], Tensor]:
        return hodfunc.derivative(f, k, method=method)

    x = x64(0.4)
    assert_close(grad(d(2))(x), d(3)(x))
    assert_close(hodfunc.derivative(d(2), 2, method=method)(x), d(4)(x))
    assert_close(d(4)(x), imperative.derivative(f, 4)(x))

    def g(x: Tensor) -> Tensor:
        return (x[0] ** 3 * torch.cos(x[1])).sum()

    xv = x64(0.5, 0.9)
    p01 = hodfunc.partial(g, (0, 1), method=method)
    assert_close(grad(p01)(xv), torch.stack([hodfunc.partial(g, (0, 1, i))(xv) for i in range(2)]))
    assert_close(
        hodfunc.jacobian(hodfunc.partial(g, (0,), method=method))(xv), hodfunc.hessian(g)(xv)[0]
    )
    assert_close(
        hodfunc.laplacian(hodfunc.partial(g, (1,), method=method), method=method)(xv),
        hodfunc.partial(hodfunc.laplacian(g, method=method), (1,), method=method)(xv),
    )


def _f(x: Tensor, y: Tensor, *, scale: float = 2.0) -> Tensor:
    """A documented function."""
    return scale * x * y


SIGNATURE_KEEPING: list[tuple[str, Callable[[Callable[..., Tensor]], Callable[..., Tensor]]]] = [
    ("derivative", lambda f: hodfunc.derivative(f, 2)),
    ("derivatives", lambda f: hodfunc.derivatives(f, 2)),
    ("partial", lambda f: hodfunc.partial(f, (0,))),
    ("laplacian", hodfunc.laplacian),
    ("derivative_tensor", lambda f: hodfunc.derivative_tensor(f, 2)),
    ("jacobian", hodfunc.jacobian),
    ("hessian", hodfunc.hessian),
    ("batched", hodfunc.batched),
    ("imperative.derivative", lambda f: imperative.derivative(f, 2)),
    ("imperative.derivatives", lambda f: imperative.derivatives(f, 2)),
    ("imperative.partial", lambda f: imperative.partial(f, (0,))),
    ("imperative.hessian", imperative.hessian),
]


@pytest.mark.parametrize(
    "transform", [t for _, t in SIGNATURE_KEEPING], ids=[n for n, _ in SIGNATURE_KEEPING]
)
def test_transforms_keep_the_signature_name_and_doc(
    transform: Callable[[Callable[..., Tensor]], Callable[..., Tensor]],
) -> None:
    g = transform(_f)
    assert inspect.signature(g) == inspect.signature(_f)
    assert g.__name__ == "_f"
    assert g.__doc__ == "A documented function."


@pytest.mark.parametrize("transform", [hodfunc.directional_derivative, hodfunc.hvp])
def test_vector_product_transforms_take_the_arguments_then_v(
    transform: Callable[..., Callable[..., Tensor]],
) -> None:
    def f(x: Tensor) -> Tensor:
        return (x**3).sum()

    g = transform(f, 2) if transform is hodfunc.directional_derivative else transform(f)
    x, v = x64(1.0, 2.0), x64(1.0, 0.0)
    assert g.__name__ == "f"
    assert g(x, v).shape in {(), (2,)}
