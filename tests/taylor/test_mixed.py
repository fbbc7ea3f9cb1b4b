"""Mixed partials from univariate jets (``_taylor._mixed``, Griewank-Utke-Walther): a weighted sum
of directional derivatives, which cancels badly when the coordinates' derivatives differ in scale.

Found in review: ``partial(exp(0.01 x0) sin(3 x1), wrt=(0,) * 20 + (1,))`` returned 3e-5 for
-1.5e-40, silently. The cancellation is now measured and warned about.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import Tensor

import hodfunc

F64 = torch.float64


def _f(x: Tensor) -> Tensor:
    return torch.exp(0.01 * x[0]) * torch.sin(3 * x[1])


def _exact(n0: int, x: tuple[float, float]) -> float:
    return 0.01**n0 * math.exp(0.01 * x[0]) * 3 * math.cos(3 * x[1])


@pytest.mark.parametrize("n0", [1, 2])
def test_a_well_conditioned_mixed_partial_is_right_and_quiet(n0: int) -> None:
    x = torch.tensor([0.3, 0.7], dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = hodfunc.partial(_f, wrt=(0,) * n0 + (1,), method="taylor")(x).item()
    assert got == pytest.approx(_exact(n0, (0.3, 0.7)), rel=1e-10, abs=0.0)


@pytest.mark.parametrize("n0", [5, 20, 100])
def test_a_mixed_partial_lost_to_cancellation_is_warned_about(n0: int) -> None:
    x = torch.tensor([0.3, 0.7], dtype=F64)
    with pytest.warns(hodfunc.PrecisionWarning, match=r"(correct digits|rounding noise).*wrt=\(0,"):
        hodfunc.partial(_f, wrt=(0,) * n0 + (1,), method="taylor")(x)


def test_an_exact_zero_from_exact_cancellation_is_not_flagged() -> None:
    x = torch.tensor([1.0, 2.0], dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = hodfunc.partial(lambda y: y[0] ** 2 * y[1], wrt=(0, 0, 1, 1), method="taylor")(x)
    assert got.item() == 0.0
