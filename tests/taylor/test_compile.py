"""hodfunc transforms under ``torch.compile``: what works and what does not (README, "torch.compile
and threads").

Before: ``fullgraph=True`` failed deep in Dynamo at ``_len_torch_dispatch_stack``, and without it
the first call took about 21 s and every later call was 2.4x slower than eager, since Dynamo tried
to compile every frame of the engine.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import hodfunc

F64 = torch.float64
# torch's own, when Dynamo first imports its jit-scripted helpers
pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
)


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> None:
    torch._dynamo.reset()


@pytest.mark.parametrize("method", ["auto", "taylor"])
def test_fullgraph_refuses_taylor_mode_with_the_way_out(method: str) -> None:
    d = hodfunc.derivative(torch.sin, order=2, method=method)  # type: ignore[arg-type]

    def step(x: Tensor) -> Tensor:
        return d(x) + 1

    with pytest.raises(torch._dynamo.exc.Unsupported, match=r"CompileError.*hodfunc\.derivative"):
        torch.compile(step, fullgraph=True)(torch.tensor(0.5))


def test_without_fullgraph_a_compiled_step_runs_the_transform_eagerly_and_agrees() -> None:
    w = torch.tensor(1.5, dtype=F64)
    lap = hodfunc.laplacian(lambda x: torch.tanh(w * x).sum())
    d3 = hodfunc.derivatives(lambda x: torch.sin(w * x), 3)

    def step(x: Tensor) -> Tensor:
        return lap(x).square() + d3(x[0]).sum()

    x = torch.tensor([0.3, -0.2], dtype=F64)
    compiled = torch.compile(step)
    assert torch.allclose(compiled(x), step(x), rtol=1e-12)
    assert torch.allclose(compiled(2 * x), step(2 * x), rtol=1e-12)
