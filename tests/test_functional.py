"""Functions that are not functions of their tensors are refused by every method, with the fix.

Before this, ``derivative(lambda x: torch.sin(x) * x.item(), order=2)`` under ``method="auto"``
fell back to nested torch.func, which treated ``x.item()`` as a constant and returned -0.0887
instead of 1.822.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

import hodfunc

F64 = torch.float64
METHODS = ("auto", "taylor", "nested")


def _quiet(fn: Callable[[], object]) -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hodfunc.FallbackWarning)
        return fn()


@pytest.mark.parametrize("method", METHODS)
def test_item_on_the_input_path_is_refused_not_treated_as_a_constant(method: str) -> None:
    d2 = hodfunc.derivative(lambda x: torch.sin(x) * x.item(), order=2, method=method)  # type: ignore[arg-type]
    with pytest.raises(hodfunc.NonFunctionalError, match=r"into Python.*torch\.where") as info:
        _quiet(lambda: d2(torch.tensor(1.0)))
    assert info.value.ops


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "read",
    [
        pytest.param(lambda y: float(y), id="float"),
        pytest.param(lambda y: y.tolist(), id="tolist"),
        pytest.param(lambda y: int(y), id="int"),
    ],
)
def test_other_reads_into_python_are_refused(method: str, read: Callable[[Tensor], float]) -> None:
    def f(x: Tensor) -> Tensor:
        return torch.exp(x) * read(x * 2)

    d = hodfunc.derivative(f, 1, method=method)  # type: ignore[arg-type]
    # Taylor mode alone cannot tell a read of the input from one of a weight in a failed trace
    expected = (
        hodfunc.UnsupportedOperationError if method == "taylor" else hodfunc.NonFunctionalError
    )
    with pytest.raises((hodfunc.NonFunctionalError, expected), match=r"data-dependent|into Python"):
        _quiet(lambda: d(torch.tensor(0.5, dtype=F64)))


@pytest.mark.parametrize("method", ["auto", "nested"])
def test_a_branch_on_the_input_is_refused_where_taylor_cannot_trace(method: str) -> None:
    def f(x: Tensor) -> Tensor:
        return torch.sin(x) if x > 0 else torch.exp(x)

    d = hodfunc.derivative(f, 2, method=method)  # type: ignore[arg-type]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no FallbackWarning for a fallback that raised
        with pytest.raises(hodfunc.NonFunctionalError, match=r"Tensor\.__bool__"):
            d(torch.tensor(0.5, dtype=F64))


def test_values_read_from_weights_are_fine() -> None:
    """Only the input's path is refused: a branch or ``.item()`` on a weight is a constant."""
    w = torch.tensor(2.0, dtype=F64)

    def f(x: Tensor) -> Tensor:
        scale = w.item()
        return torch.sin(scale * x) if w > 0 else torch.cos(x)

    x = torch.tensor(0.3, dtype=F64)
    with pytest.warns(hodfunc.FallbackWarning):  # Taylor mode cannot trace the branch
        got = hodfunc.derivative(f, 2)(x)
    assert torch.allclose(got, -4 * torch.sin(2 * x))
    assert torch.allclose(hodfunc.derivative(f, 2, method="nested")(x), got)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "noisy",
    [
        pytest.param(lambda x: torch.sin(x) + torch.randn(()), id="randn"),
        pytest.param(lambda x: torch.sin(x) * torch.rand_like(x), id="rand_like"),
        pytest.param(lambda x: nn.functional.dropout(torch.sin(x), 0.5, True), id="dropout"),
    ],
)
def test_random_draws_are_refused(method: str, noisy: Callable[[Tensor], Tensor]) -> None:
    d = hodfunc.derivative(noisy, 1, method=method)  # type: ignore[arg-type]
    with pytest.raises(hodfunc.NonFunctionalError, match=r"random.*outside"):
        _quiet(lambda: d(torch.tensor(0.5)))


@pytest.mark.parametrize("method", METHODS)
def test_dropout_in_eval_mode_is_fine(method: str) -> None:
    net = nn.Sequential(nn.Dropout(0.5), nn.Tanh()).eval()
    d = hodfunc.derivative(lambda x: net(x), 1, method=method)  # type: ignore[arg-type]
    x = torch.tensor(0.5, dtype=F64)
    assert torch.allclose(d(x), 1 - torch.tanh(x) ** 2)
    net.train()
    with pytest.raises(hodfunc.NonFunctionalError, match=r"model\.eval"):
        _quiet(lambda: d(x))


def test_the_fallback_warning_names_the_ops_and_a_fix_that_fits_an_auto_user() -> None:
    """The fallback's fix used to tell an auto user to use ``method="auto"``."""
    d = hodfunc.derivative(torch.lgamma, 2)
    with pytest.warns(hodfunc.FallbackWarning) as record:
        d(torch.tensor(2.5, dtype=F64))
    text = str(record[0].message)
    assert "aten.lgamma.default" in text
    assert 'Use method="auto"' not in text
    assert 'Pass method="nested"' in text
