"""Shared pieces of the test suite: seeded float64 MLPs, the methods to cover, and comparisons.

>>> net = mlp(3, 8, 1, "tanh")
>>> net(torch.zeros(3, dtype=torch.float64)).shape
torch.Size([1])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from hodfunc import Method
from hodfunc._transforms._method import available_methods

__all__ = ["ACTIVATIONS", "METHODS", "MLP", "assert_close", "mlp", "seeded"]

# compiled: the taylor engine again, seconds of inductor per case (tests/taylor/test_compiled.py)
METHODS: tuple[Method, ...] = tuple(m for m in available_methods() if m != "compiled")
"""Every ``method=`` registered; functional-vs-oracle tests run once per method."""

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "tanh": torch.tanh,
    "softplus": nn.functional.softplus,
    "sigmoid": torch.sigmoid,
    "gelu": nn.functional.gelu,
    "sin": torch.sin,
}
"""The smooth activations of the issue's MLPs."""


class MLP(nn.Module):
    """``Linear -> act -> Linear -> act -> Linear``, in float64."""

    def __init__(self, n_in: int, width: int, n_out: int, activation: str) -> None:
        super().__init__()
        self.act = ACTIVATIONS[activation]
        self.l1 = nn.Linear(n_in, width, dtype=torch.float64)
        self.l2 = nn.Linear(width, width, dtype=torch.float64)
        self.l3 = nn.Linear(width, n_out, dtype=torch.float64)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.l3(self.act(self.l2(self.act(self.l1(x)))))
        return out


def seeded(seed: int) -> torch.Generator:
    """A private generator: tests draw numbers without touching the global RNG."""
    return torch.Generator().manual_seed(seed)


def mlp(n_in: int, width: int, n_out: int, activation: str, seed: int = 0) -> MLP:
    """A float64 ``MLP`` initialised from ``seed``; the global RNG state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MLP(n_in, width, n_out, activation)


def assert_close(actual: Tensor, expected: Tensor, rtol: float = 1e-10) -> None:
    """``|actual - expected| <= rtol * max(1, max|expected|)`` elementwise, shapes equal.

    Scaling by the largest entry keeps entries that should be zero (but come out as rounding noise
    of the order of the others) from failing a purely relative test.
    """
    actual, expected = actual.detach(), expected.detach()
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=0.0, atol=rtol * scale)
