"""Bad input: every error is typed and its message names the API, shows the value and gives the fix.

Each case is one row of a table: what is run, the error type, and three fragments the message must
contain. Options are checked when a transform is built; those rows only build it.
"""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

import hodfunc
from hodfunc import imperative

X0 = torch.tensor(0.5, dtype=torch.float64)
XV = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
XI = torch.tensor(2)
XIV = torch.tensor([1, 2, 3])


def cube(x: Tensor) -> Tensor:
    return x**3


def cube_sum(x: Tensor) -> Tensor:
    return (x**3).sum()


def not_a_tensor(x: Tensor) -> float:
    return 1.0


def never_called(x: Tensor) -> Tensor:
    raise AssertionError("a transform called the function while being built")


@dataclass(frozen=True)
class Bad:
    """A bad input: ``run`` raises ``error``, whose message holds ``api``, ``value`` and ``fix``."""

    id: str
    run: Callable[[], object]
    error: type[Exception]
    api: str
    value: str
    fix: str


# The transforms as (api name, build(f, **options), call(g, x)): one way to exercise them all.
Builder = Callable[..., Callable[..., Tensor]]
Caller = Callable[[Callable[..., Tensor], Tensor], Tensor]


def _call(g: Callable[..., Tensor], x: Tensor) -> Tensor:
    return g(x)


def _call_v(g: Callable[..., Tensor], x: Tensor) -> Tensor:
    return g(x, torch.ones_like(x))


# Transforms of a 0-d argument that take an order.
ORDERED: list[tuple[str, Builder]] = [
    ("hodfunc.derivative", hodfunc.derivative),
    ("hodfunc.derivatives", hodfunc.derivatives),
    ("hodfunc.imperative.derivative", imperative.derivative),
    ("hodfunc.imperative.derivatives", imperative.derivatives),
]
# Every transform of one tensor argument, built at order 2 where it takes an order.
ALL: list[tuple[str, Builder, Caller, Tensor]] = [
    ("hodfunc.derivative", lambda f, **k: hodfunc.derivative(f, 2, **k), _call, X0),
    ("hodfunc.derivatives", lambda f, **k: hodfunc.derivatives(f, 2, **k), _call, X0),
    ("hodfunc.partial", lambda f, **k: hodfunc.partial(f, (0, 1), **k), _call, XV),
    (
        "hodfunc.directional_derivative",
        lambda f, **k: hodfunc.directional_derivative(f, 2, **k),
        _call_v,
        XV,
    ),
    ("hodfunc.laplacian", hodfunc.laplacian, _call, XV),
    ("hodfunc.derivative_tensor", lambda f, **k: hodfunc.derivative_tensor(f, 2, **k), _call, XV),
    ("hodfunc.jacobian", hodfunc.jacobian, _call, XV),
    ("hodfunc.hessian", hodfunc.hessian, _call, XV),
    ("hodfunc.hvp", hodfunc.hvp, _call_v, XV),
    ("hodfunc.imperative.derivative", lambda f, **k: imperative.derivative(f, 2, **k), _call, X0),
    ("hodfunc.imperative.derivatives", lambda f, **k: imperative.derivatives(f, 2, **k), _call, X0),
    ("hodfunc.imperative.partial", lambda f, **k: imperative.partial(f, (0, 1), **k), _call, XV),
    ("hodfunc.imperative.hessian", imperative.hessian, _call, XV),
]


def _apply(
    build: Builder, call: Caller, f: Callable[..., object], x: Tensor, **opt: object
) -> None:
    """Build the transform of ``f`` with options ``opt`` and call it at ``x``."""
    call(build(f, **opt), x)


def _cases() -> list[Bad]:
    cases: list[Bad] = []
    with_order: list[tuple[str, Builder]] = [
        *ORDERED,
        ("hodfunc.directional_derivative", hodfunc.directional_derivative),
        ("hodfunc.derivative_tensor", hodfunc.derivative_tensor),
    ]
    for api, build in with_order:
        short = api.removeprefix("hodfunc.")
        cases += [
            Bad(f"{short}-order=-1", functools.partial(build, never_called, -1),
                hodfunc.ArgumentError, api, "got -1", "order=1"),
            Bad(f"{short}-order=1.5", functools.partial(build, never_called, 1.5),
                hodfunc.ArgumentTypeError, api, "1.5 of type float", "order=1"),
            Bad(f"{short}-order=True", functools.partial(build, never_called, True),
                hodfunc.ArgumentTypeError, api, "True of type bool", "order=1"),
            Bad(f"{short}-order='2'", functools.partial(build, never_called, "2"),
                hodfunc.ArgumentTypeError, api, "'2' of type str", "order=1"),
        ]  # fmt: skip
    for api, build in ORDERED:
        short = api.removeprefix("hodfunc.")
        order2 = functools.partial(build, order=2)
        cases.append(
            Bad(f"{short}-vector-argument", functools.partial(_apply, order2, _call, cube, XV),
                hodfunc.ShapeError, api, "shape (3,)", "hodfunc.partial")
        )  # fmt: skip
    partials: list[tuple[str, Builder]] = [
        ("hodfunc.partial", hodfunc.partial),
        ("hodfunc.imperative.partial", imperative.partial),
    ]
    for api, build in partials:
        short = api.removeprefix("hodfunc.")
        cases += [
            Bad(f"{short}-wrt-out-of-range",
                functools.partial(_apply, build, _call, cube_sum, XV, wrt=(0, 3)),
                hodfunc.ArgumentError, api, "wrt=(0, 3)", "range(0, 3)"),
            Bad(f"{short}-wrt-negative", functools.partial(build, never_called, (0, -1)),
                hodfunc.ArgumentError, api, "(0, -1)", "flat indices"),
            Bad(f"{short}-wrt-int", functools.partial(build, never_called, 2),
                hodfunc.ArgumentTypeError, api, "got 2.", "wrt=(0, 0, 2)"),
        ]  # fmt: skip
    for api, build, call, x in ALL:
        short = api.removeprefix("hodfunc.")
        f = cube if x.dim() == 0 else cube_sum
        xi = XI if x.dim() == 0 else XIV
        cases += [
            Bad(f"{short}-argnums-out-of-range",
                functools.partial(_apply, build, call, f, x, argnums=1),
                hodfunc.ArgumentError, api, "argnums=1", "point argnums at it"),
            Bad(f"{short}-argnums-tuple", functools.partial(build, never_called, argnums=(0, 1)),
                hodfunc.ArgumentTypeError, api, "(0, 1)", "argnums=0"),
            Bad(f"{short}-integer-dtype", functools.partial(_apply, build, call, f, xi),
                hodfunc.ArgumentTypeError, api, "torch.int64", "x.double()"),
            Bad(f"{short}-returns-float", functools.partial(_apply, build, call, not_a_tensor, x),
                hodfunc.ArgumentTypeError, api, "a float", "Return a tensor"),
        ]  # fmt: skip
    return cases + _other_cases()


def _model() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))


def _other_cases() -> list[Bad]:
    mse = nn.functional.mse_loss
    ones5, ones4 = torch.ones(5), torch.ones(4)
    return [
        Bad("batched-mismatched-batch",
            lambda: hodfunc.batched(torch.mul)(ones5, ones4),
            hodfunc.ShapeError, "hodfunc.batched", "argument 0: 5, argument 1: 4",
            "Slice or repeat"),
        Bad("batched-chunk-size-0", lambda: hodfunc.batched(never_called, chunk_size=0),
            hodfunc.ArgumentError, "hodfunc.batched", "got 0", "1024"),
        Bad("batched-in-dims-length",
            lambda: hodfunc.batched(torch.mul, in_dims=(0,))(ones5, ones5),
            hodfunc.ArgumentError, "hodfunc.batched", "in_dims=(0,)", "None for shared"),
        Bad("jacobian-chunk-size-0", lambda: hodfunc.jacobian(never_called, chunk_size=0),
            hodfunc.ArgumentError, "hodfunc.jacobian", "got 0", "1024"),
        Bad("hessian-chunk-size-1.5", lambda: hodfunc.hessian(never_called, chunk_size=1.5),  # type: ignore[arg-type]
            hodfunc.ArgumentError, "hodfunc.hessian", "got 1.5", "1024"),
        Bad("derivative-method", lambda: hodfunc.derivative(never_called, method="fast"),  # type: ignore[arg-type]
            hodfunc.ArgumentError, "hodfunc.derivative", "'fast'", 'method="auto"'),
        Bad("directional-direction-shape",
            lambda: hodfunc.directional_derivative(cube_sum, 1)(XV, torch.ones(2)),
            hodfunc.ShapeError, "hodfunc.directional_derivative", "shape (2,)", "one direction"),
        Bad("hvp-vector-output", lambda: hodfunc.hvp(cube)(XV, torch.ones_like(XV)),
            hodfunc.ShapeError, "hodfunc.hvp", "shape (3,)", "Reduce it"),
        Bad("per-sample-batchnorm-training",
            lambda: hodfunc.per_sample_grads(_model(), mse, torch.ones(5, 3), torch.ones(5, 1)),
            hodfunc.NonFunctionalModuleError, "hodfunc.per_sample_grads",
            "BatchNorm1d, training=True", "model.eval()"),
        Bad("per-sample-mismatched-batch",
            lambda: hodfunc.per_sample_grads(_model().eval(), mse, torch.ones(5, 3),
                                             torch.ones(4, 1)),
            hodfunc.ShapeError, "hodfunc.per_sample_grads", "[5, 4]", "same batch"),
        Bad("imperative-per-sample-batchnorm-training",
            lambda: imperative.per_sample_grads(_model(), mse, torch.ones(5, 3), torch.ones(5, 1)),
            hodfunc.NonFunctionalModuleError, "hodfunc.imperative.per_sample_grads",
            "BatchNorm1d, training=True", "model.eval()"),
    ]  # fmt: skip


CASES = _cases()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_raises_a_typed_error_naming_api_value_and_fix(case: Bad) -> None:
    with pytest.raises(case.error, match=f"^{re.escape(case.api)}: ") as info:
        case.run()
    text = str(info.value)
    assert case.value in text, text
    assert case.fix in text, text


def test_errors_are_also_the_builtin_types_callers_catch() -> None:
    assert issubclass(hodfunc.ArgumentError, ValueError)
    assert issubclass(hodfunc.ArgumentTypeError, TypeError)
    assert issubclass(hodfunc.ShapeError, ValueError)
    with pytest.raises(ValueError, match="order must be an int"):
        hodfunc.derivative(cube, -1)


# ---------------------------------------------------------------------------------------------
# Half precision at order >= 2 warns; at order 1 it does not.

LOW = [torch.float16, torch.bfloat16]
SECOND_ORDER = [a for a in ALL if a[0] != "hodfunc.jacobian"]  # the Jacobian is order 1


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize(
    ("api", "build", "call", "x"), SECOND_ORDER, ids=[a[0] for a in SECOND_ORDER]
)
def test_half_precision_at_order_2_warns(
    api: str, build: Builder, call: Caller, x: Tensor, dtype: torch.dtype
) -> None:
    f = cube if x.dim() == 0 else cube_sum
    with pytest.warns(hodfunc.PrecisionWarning, match=f"^{re.escape(api)}: ") as record:
        call(build(f), x.to(dtype))
    text = str(record[0].message)
    assert str(dtype) in text
    assert "float32 or float64" in text
    assert record[0].filename == __file__  # the warning points at the caller's line


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize(
    "run",
    [
        lambda x: hodfunc.derivative(cube, 1)(x),
        lambda x: hodfunc.derivatives(cube, 1)(x),
        lambda x: hodfunc.jacobian(cube)(x.reshape(1)),
        lambda x: hodfunc.partial(cube_sum, (0,))(x.reshape(1)),
        lambda x: imperative.derivative(cube, 1)(x),
    ],
    ids=["derivative", "derivatives", "jacobian", "partial", "imperative.derivative"],
)
def test_half_precision_at_order_1_is_silent(
    run: Callable[[Tensor], Tensor], dtype: torch.dtype
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = run(torch.tensor(1.5, dtype=dtype))
    assert out.dtype == dtype
