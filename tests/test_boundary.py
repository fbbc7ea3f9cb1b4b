"""The public boundary (issue 10, items 5, 12, 13, 14): every reproducer of a raw torch or Python
error now gets a typed hodfunc error naming the API, the value and the fix; ``assert_equivalent``
works in float32; ``directional_derivative`` and ``hvp`` pass keyword arguments on.

Each row is the reproducer from the issue, run as it was reported.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

import hodfunc
from hodfunc import imperative
from hodfunc.testing import EquivalenceError, assert_equivalent, default_rtol

F64 = torch.float64
MSE = nn.functional.mse_loss
ONE = torch.ones(())


def _linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(3, 1)


def _xy(n: int = 4) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, generator=g), torch.randn(n, 1, generator=g)


class _Scale(nn.Module):
    """A parameter without a per-layer rule: it falls back to vmap(grad)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.w


class _NoisyScale(_Scale):
    """Random numbers drawn inside forward (functional dropout), not by a Dropout module."""

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.dropout(x * self.w, 0.5, training=True)


@dataclass(frozen=True)
class Case:
    run: Callable[[], object]
    error: type[Exception]
    fragments: tuple[str, ...]


SPARSE = torch.eye(3).to_sparse()
EMPTY = (torch.zeros(0, 3), torch.zeros(0, 1))
PER_SAMPLE: list[tuple[str, Callable[..., object]]] = [
    ("per_sample_grads", hodfunc.per_sample_grads),
    ("per_sample_grad_norms", hodfunc.per_sample_grad_norms),
    ("clipped_grad_sum", lambda *a: hodfunc.clipped_grad_sum(*a, max_norm=1.0)),
    ("imperative.per_sample_grads", imperative.per_sample_grads),
    ("imperative.per_sample_grad_norms", imperative.per_sample_grad_norms),
    ("imperative.clipped_grad_sum", lambda *a: imperative.clipped_grad_sum(*a, max_norm=1.0)),
]
BUILDERS: list[tuple[str, Callable[[object], object]]] = [
    ("derivative", lambda f: hodfunc.derivative(f)),  # type: ignore[arg-type]
    ("derivatives", lambda f: hodfunc.derivatives(f, 2)),  # type: ignore[arg-type]
    ("partial", lambda f: hodfunc.partial(f, (0,))),  # type: ignore[arg-type]
    ("directional_derivative", lambda f: hodfunc.directional_derivative(f, 1)),  # type: ignore[call-overload]
    ("laplacian", lambda f: hodfunc.laplacian(f)),  # type: ignore[arg-type]
    ("derivative_tensor", lambda f: hodfunc.derivative_tensor(f, 2)),  # type: ignore[arg-type]
    ("jacobian", lambda f: hodfunc.jacobian(f)),  # type: ignore[arg-type]
    ("hessian", lambda f: hodfunc.hessian(f)),  # type: ignore[arg-type]
    ("hvp", lambda f: hodfunc.hvp(f)),  # type: ignore[call-overload]
    ("batched", lambda f: hodfunc.batched(f)),  # type: ignore[arg-type]
    ("imperative.derivative", lambda f: imperative.derivative(f)),  # type: ignore[arg-type]
    ("imperative.derivatives", lambda f: imperative.derivatives(f, 2)),  # type: ignore[arg-type]
    ("imperative.partial", lambda f: imperative.partial(f, (0,))),  # type: ignore[arg-type]
    ("imperative.hessian", lambda f: imperative.hessian(f)),  # type: ignore[arg-type]
    (
        "testing.assert_equivalent",
        lambda f: assert_equivalent(f, torch.tensor(0.5), order=1),  # type: ignore[arg-type]
    ),
]

CASES: dict[str, Case] = {
    # item 12: an integer output under Taylor mode (and the other methods)
    **{
        f"integer output, method={m}": Case(
            lambda m=m: hodfunc.derivative(lambda x: (x * 0).long(), order=2, method=m)(  # type: ignore[misc]
                torch.tensor(1.0)
            ),
            hodfunc.ArgumentTypeError,
            ("hodfunc.derivative", "floating-point tensor", "torch.int64", "piecewise constant"),
        )
        for m in ("taylor", "nested", "auto")
    },
    "bool output": Case(
        lambda: hodfunc.jacobian(lambda x: x > 0)(torch.ones(2)),
        hodfunc.ArgumentTypeError,
        ("hodfunc.jacobian", "floating-point tensor", "torch.bool"),
    ),
    "imperative integer output": Case(
        lambda: imperative.derivative(lambda x: (x * 0).long(), order=2)(torch.tensor(1.0)),
        hodfunc.ArgumentTypeError,
        ("hodfunc.imperative.derivative", "torch.int64", "piecewise constant"),
    ),
    # item 12: batched(f, in_dims='0')
    "batched in_dims string": Case(
        lambda: hodfunc.batched(torch.sin, in_dims="0"),  # type: ignore[arg-type]
        hodfunc.ArgumentTypeError,
        ("hodfunc.batched", "in_dims must be an int, None, or a tuple", "'0'", "in_dims=0"),
    ),
    "batched in_dims float entry": Case(
        lambda: hodfunc.batched(torch.sin, in_dims=(0, 1.0)),  # type: ignore[arg-type]
        hodfunc.ArgumentTypeError,
        ("hodfunc.batched", "every entry of in_dims", "(0, 1.0)", "(0, None)"),
    ),
    # item 12: sparse inputs
    "sparse jacobian": Case(
        lambda: hodfunc.jacobian(lambda x: x * 2)(SPARSE),
        hodfunc.ArgumentTypeError,
        ("hodfunc.jacobian", "dense (strided)", "torch.sparse_coo", "x.to_dense()"),
    ),
    "sparse partial": Case(
        lambda: hodfunc.partial(lambda x: (x**2).sum(), (0,))(SPARSE),
        hodfunc.ArgumentTypeError,
        ("hodfunc.partial", "dense (strided)", "torch.sparse_coo", "x.to_dense()"),
    ),
    "sparse direction": Case(
        lambda: hodfunc.directional_derivative(lambda x: (x**2).sum(), 1)(torch.ones(3, 3), SPARSE),
        hodfunc.ArgumentTypeError,
        ("hodfunc.directional_derivative", "the direction v", "sparse_coo", "x.to_dense()"),
    ),
    "sparse hessian": Case(
        lambda: hodfunc.hessian(lambda x: (x**2).sum())(SPARSE),
        hodfunc.ArgumentTypeError,
        ("hodfunc.hessian", "dense (strided)", "torch.sparse_coo", "x.to_dense()"),
    ),
    "sparse batched": Case(
        lambda: hodfunc.batched(torch.sin)(SPARSE),
        hodfunc.ArgumentTypeError,
        ("hodfunc.batched", "batched argument 0", "sparse_coo", "x.to_dense()"),
    ),
    "sparse per-sample batch": Case(
        lambda: hodfunc.per_sample_grads(_linear(), MSE, SPARSE, torch.zeros(3, 1)),
        hodfunc.ArgumentTypeError,
        ("hodfunc.per_sample_grads", "batch tensor 0", "sparse_coo", "x.to_dense()"),
    ),
    "sparse imperative": Case(
        lambda: imperative.hessian(lambda x: (x**2).sum())(SPARSE),
        hodfunc.ArgumentTypeError,
        ("hodfunc.imperative.hessian", "dense (strided)", "x.to_dense()"),
    ),
    # item 13: a complex input is not told to call x.double()
    "complex input": Case(
        lambda: hodfunc.derivative(torch.sin)(torch.tensor(1.0 + 1.0j)),
        hodfunc.ArgumentTypeError,
        ("hodfunc.derivative", "must be real", "torch.complex64", "torch.complex(re, im)"),
    ),
    "complex vector input": Case(
        lambda: hodfunc.jacobian(torch.sin)(torch.ones(2, dtype=torch.complex128)),
        hodfunc.ArgumentTypeError,
        ("hodfunc.jacobian", "must be real", "torch.complex128", "z.real, z.imag"),
    ),
    # item 12: Dropout (and other random ops) in per_sample_grads
    "dropout under the vmap fallback": Case(
        lambda: hodfunc.per_sample_grads(
            nn.Sequential(_Scale(), nn.Dropout(0.5), nn.Linear(3, 1)), MSE, *_xy()
        ),
        hodfunc.NonFunctionalModuleError,
        ("hodfunc.per_sample_grads", "draw no random numbers", "Dropout, training=True", "eval()"),
    ),
    "dropout with per-layer rules": Case(
        lambda: hodfunc.per_sample_grad_norms(
            nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5), nn.Linear(3, 1)), MSE, *_xy()
        ),
        hodfunc.NonFunctionalModuleError,
        ("hodfunc.per_sample_grad_norms", "draw no random numbers", "Dropout", "eval()"),
    ),
    "functional dropout under the vmap fallback": Case(
        lambda: hodfunc.per_sample_grads(nn.Sequential(_NoisyScale()), MSE, *_xy()),
        hodfunc.NonFunctionalModuleError,
        ("hodfunc.per_sample_grads", "draw no random numbers", "vmap", "eval()"),
    ),
    "functional dropout in the probe": Case(
        lambda: hodfunc.clipped_grad_sum(
            nn.Sequential(nn.Linear(3, 3), _NoisyScale()),
            lambda o, y: MSE(o[:, :1], y),
            *_xy(),
            max_norm=1.0,
        ),
        hodfunc.NonFunctionalModuleError,
        ("hodfunc.clipped_grad_sum", "draw no random numbers", "dropout", "eval()"),
    ),
    "random loss": Case(
        lambda: hodfunc.per_sample_grads(
            _linear(), lambda o, y: MSE(o + torch.randn_like(o), y), *_xy()
        ),
        hodfunc.NonFunctionalModuleError,
        ("hodfunc.per_sample_grads", "draw no random numbers", "outside the model"),
    ),
    "imperative dropout": Case(
        lambda: imperative.per_sample_grads(
            nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5), nn.Linear(3, 1)), MSE, *_xy()
        ),
        hodfunc.NonFunctionalModuleError,
        ("hodfunc.imperative.per_sample_grads", "Dropout, training=True", "eval()"),
    ),
    # item 14: v is required
    "directional derivative without arguments": Case(
        lambda: hodfunc.directional_derivative(lambda x: x.sum(), 1)(),  # type: ignore[call-arg]
        hodfunc.ArgumentError,
        ("hodfunc.directional_derivative", "last positional argument", "g(x, v)"),
    ),
}
for _name, _fn in PER_SAMPLE:
    _api = f"hodfunc.{_name}"
    CASES[f"{_name}: empty batch"] = Case(
        lambda fn=_fn: fn(_linear(), MSE, *EMPTY),  # type: ignore[misc]
        hodfunc.ShapeError,
        (_api, "at least one sample", "batch size 0", "Skip empty batches"),
    )
    CASES[f"{_name}: model not a module"] = Case(
        lambda fn=_fn: fn(lambda x: x, MSE, *_xy()),  # type: ignore[misc]
        hodfunc.ArgumentTypeError,
        (_api, "model must be a torch.nn.Module", "of type function", "torch.func.vmap"),
    )
    CASES[f"{_name}: loss as a string"] = Case(
        lambda fn=_fn: fn(_linear(), "mse", *_xy()),  # type: ignore[misc]
        hodfunc.ArgumentTypeError,
        (_api, "loss_fn must be a callable", "'mse' of type str", "mse_loss"),
    )
for _name, _build in BUILDERS:
    for _bad in (None, "sin"):
        CASES[f"{_name}({_bad!r})"] = Case(
            lambda b=_build, f=_bad: b(f),  # type: ignore[misc]
            hodfunc.ArgumentTypeError,
            (f"hodfunc.{_name}", "must be a callable", repr(_bad), "not its name or its value"),
        )


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_bad_input_gets_a_typed_error_with_the_fix(case: Case) -> None:
    with pytest.raises(case.error) as info:
        case.run()
    text = str(info.value)
    for fragment in case.fragments:
        assert fragment in text, (fragment, text)


def test_callables_are_checked_when_the_transform_is_built() -> None:
    """``derivative(None)`` used to return a function that failed only when called."""
    with pytest.raises(hodfunc.ArgumentTypeError, match=re.escape("got None of type NoneType")):
        hodfunc.derivative(None)  # type: ignore[arg-type]


def test_batched_still_returns_integer_outputs() -> None:
    """``batched`` is a plain vmap: it does not differentiate, so integer outputs are fine."""
    out = hodfunc.batched(lambda x: x.argmax())(torch.tensor([[1.0, 3.0], [4.0, 2.0]]))
    assert out.tolist() == [1, 0]


def test_dropout_in_eval_mode_and_p_zero_are_fine() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5), _Scale(), nn.Linear(3, 1))
    x, y = _xy()
    grads = hodfunc.per_sample_grads(model.eval(), MSE, x, y)
    assert grads["0.weight"].shape == (4, 3, 3)
    assert model.training is False
    zero = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.0), _Scale(), nn.Linear(3, 1))
    assert hodfunc.per_sample_grad_norms(zero, MSE, x, y).shape == (4,)


# item 5: assert_equivalent in float32


@pytest.mark.parametrize("order", range(5))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_assert_equivalent_holds_in_the_inputs_dtype(order: int, dtype: torch.dtype) -> None:
    """The reproducer: float32 at order 0 failed (3.4e-8 against a float64 tolerance 1e-9)."""
    results = assert_equivalent(torch.sin, torch.tensor(0.5, dtype=dtype), order=order)
    assert results["nested"].dtype == dtype
    assert_equivalent(
        lambda x: torch.tanh(3 * x) ** 2 + (x**3).sum(), torch.tensor(-1.3, dtype=dtype), order=4
    )
    assert_equivalent(lambda x: (x**3).sum() * x[0], torch.tensor([0.5, 1.2], dtype=dtype), order=2)


def test_float64_tolerances_stay_strict() -> None:
    assert default_rtol(torch.float64, 0) == default_rtol(torch.float64, 6) == 1e-10
    eps32 = torch.finfo(torch.float32).eps
    assert default_rtol(torch.float32, 0) == 64 * eps32
    assert default_rtol(torch.float32, 4) == 1024 * eps32
    with pytest.raises(EquivalenceError, match="finite_difference"):
        assert_equivalent(_hidden(1e-7), torch.tensor(0.5, dtype=F64), order=1)


def test_float32_still_catches_a_wrong_derivative() -> None:
    with pytest.raises(EquivalenceError, match="finite_difference"):
        assert_equivalent(_hidden(1e-3), torch.tensor(0.5), order=1)


def _hidden(size: float) -> Callable[[Tensor], Tensor]:
    """``x + size * sin(x)`` with the sine detached: every autodiff method gets the derivative
    ``1``, finite differences the true ``1 + size * cos(x)``."""
    return lambda x: x + size * torch.sin(x.detach())


# item 14: keyword arguments reach f


def _scaled_cube(x: Tensor, *, a: Tensor, b: float = 1.0) -> Tensor:
    return (b * a * x**3).sum()


def test_directional_derivative_passes_keyword_arguments() -> None:
    x, v = torch.tensor([1.0, 2.0], dtype=F64), torch.tensor([1.0, 1.0], dtype=F64)
    g = hodfunc.directional_derivative(_scaled_cube, 2)
    expected = (6 * 3.0 * 0.5 * x * v * v).sum()  # v^T H v with H = diag(6 a b x)
    torch.testing.assert_close(g(x, v, a=torch.tensor(3.0, dtype=F64), b=0.5), expected)
    for method in ("nested", "taylor"):
        h = hodfunc.directional_derivative(_scaled_cube, 2, method=method)
        torch.testing.assert_close(h(x, v, a=torch.tensor(3.0, dtype=F64), b=0.5), expected)


def test_hvp_passes_keyword_arguments() -> None:
    x, v = torch.tensor([1.0, 2.0], dtype=F64), torch.tensor([1.0, 0.0], dtype=F64)
    g = hodfunc.hvp(_scaled_cube)
    torch.testing.assert_close(
        g(x, v, a=torch.tensor(2.0, dtype=F64)), torch.tensor([12.0, 0.0], dtype=F64)
    )
    with pytest.raises(TypeError, match="a"):  # f's own check: a is required
        g(x, v)


@pytest.mark.parametrize("transform", ["directional_derivative", "hvp"])
def test_vector_products_show_v_then_the_keyword_parameters(transform: str) -> None:
    def f(x: Tensor, y: Tensor = ONE, *, a: float, b: float = 1.0) -> Tensor:
        return (a * b * x * y).sum()

    g = (
        hodfunc.directional_derivative(f, 1)
        if transform == "directional_derivative"
        else hodfunc.hvp(f)
    )
    assert (
        str(inspect.signature(g))
        == "(x: 'Tensor', y: 'Tensor', v, /, *, a: 'float', b: 'float' = 1.0) -> 'Tensor'"
    )
