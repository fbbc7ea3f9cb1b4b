"""``batched``: equals ``torch.func.vmap`` for any chunking, checks batch sizes, shows progress."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close, seeded
from torch import Tensor
from torch.func import vmap

import hodfunc

F64 = torch.float64


def f(x: Tensor, w: Tensor, *, scale: float = 1.0) -> Tensor:
    return scale * torch.tanh(x @ w) ** 2


X = torch.randn(5, 3, dtype=F64, generator=seeded(0))
W = torch.randn(3, 2, dtype=F64, generator=seeded(1))


@pytest.mark.parametrize("chunk_size", [None, 1, 2, 3, 5, 7])
def test_equals_vmap_for_every_chunking(chunk_size: int | None) -> None:
    got = hodfunc.batched(f, in_dims=(0, None), chunk_size=chunk_size)(X, W, scale=0.5)
    assert got.shape == (5, 2)
    assert_close(got, vmap(f, in_dims=(0, None))(X, W, scale=0.5))


def test_in_dims_other_than_0() -> None:
    xt = X.T.contiguous()  # batch along dim 1
    got = hodfunc.batched(f, in_dims=(1, None), chunk_size=2)(xt, W)
    assert_close(got, vmap(f, in_dims=(0, None))(X, W))


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_batched_derivatives_equal_a_python_loop(chunk_size: int | None) -> None:
    d3 = hodfunc.derivative(lambda t: torch.sin(t) * torch.exp(t), 3)
    ts = torch.linspace(-1, 1, 5, dtype=F64)
    assert_close(hodfunc.batched(d3, chunk_size=chunk_size)(ts), torch.stack([d3(t) for t in ts]))
    hess = hodfunc.hessian(lambda x: (x**4).sum())
    assert_close(hodfunc.batched(hess, chunk_size=chunk_size)(X), torch.diag_embed(12 * X**2))


def test_progress_goes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    hodfunc.batched(f, in_dims=(0, None), chunk_size=2)(X, W)
    assert capsys.readouterr().err == ""
    hodfunc.batched(f, in_dims=(0, None), chunk_size=2, progress=True)(X, W)
    captured = capsys.readouterr()
    assert "5/5" in captured.err
    assert captured.out == ""


def test_mismatched_batch_sizes_are_refused_not_broadcast() -> None:
    g = hodfunc.batched(torch.mul)
    with pytest.raises(hodfunc.ShapeError, match=r"argument 0: 5, argument 1: 1"):
        g(torch.ones(5), torch.ones(1))  # vmap would not broadcast either; the message says why
    with pytest.raises(hodfunc.ShapeError, match="at least one point"):
        g(torch.ones(0), torch.ones(0))
    with pytest.raises(hodfunc.ArgumentError, match="at least one argument must be batched"):
        hodfunc.batched(torch.sin, in_dims=None)(torch.ones(3))


def test_signature_is_kept() -> None:
    g = hodfunc.batched(f)
    assert g.__name__ == "f"
    assert g.__wrapped__ is f  # type: ignore[attr-defined]
