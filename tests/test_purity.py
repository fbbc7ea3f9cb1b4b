"""Purity: no public function changes anything the caller owns.

Hypothesis draws a model (activation, which parameters are frozen, which hold a stale ``.grad``,
train/eval flags, BatchNorm running statistics), inputs (with or without ``requires_grad`` and a
``.grad``), whether the call runs under ``torch.no_grad()``, and one public function (functional
or imperative). A snapshot before and after must agree on parameters, buffers, ``.grad``,
``requires_grad``, every submodule's ``training`` flag, the global RNG state, grad mode and the
caller's tensors: their values and their ``._version`` counters (an in-place write that was undone
still shows there).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from helpers import ACTIVATIONS
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import hodfunc
from hodfunc import imperative


class Model(nn.Module):
    """``Linear -> act -> BatchNorm (eval) -> Linear``: parameters, buffers and modes to watch."""

    def __init__(self, activation: str) -> None:
        super().__init__()
        self.act = ACTIVATIONS[activation]
        self.l1 = nn.Linear(3, 6, dtype=torch.float64)
        self.norm = nn.BatchNorm1d(6, dtype=torch.float64)
        self.l2 = nn.Linear(6, 1, dtype=torch.float64)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.l2(self.norm(self.act(self.l1(x))))
        return out


@dataclass(frozen=True)
class State:
    """Everything a call might change, copied."""

    tensors: dict[str, tuple[Tensor, int, bool, Tensor | None]]  # value, version, req. grad, grad
    training: dict[str, bool]
    rng: Tensor
    grad_enabled: bool


def _copy(t: Tensor) -> tuple[Tensor, int, bool, Tensor | None]:
    grad = None if t.grad is None else t.grad.detach().clone()
    return t.detach().clone(), t._version, t.requires_grad, grad


def snapshot(model: nn.Module, inputs: dict[str, Tensor]) -> State:
    tensors = {f"param {k}": _copy(p) for k, p in model.named_parameters()}
    tensors |= {f"buffer {k}": _copy(b) for k, b in model.named_buffers()}
    tensors |= {f"input {k}": _copy(t) for k, t in inputs.items()}
    training = {name or "model": m.training for name, m in model.named_modules()}
    return State(tensors, training, torch.get_rng_state(), torch.is_grad_enabled())


def assert_same(before: State, after: State) -> None:
    assert before.tensors.keys() == after.tensors.keys()
    for name, (value, version, requires_grad, grad) in before.tensors.items():
        value2, version2, requires_grad2, grad2 = after.tensors[name]
        assert torch.equal(value, value2), f"{name}: value changed"
        assert version == version2, f"{name}: written in place (version {version} -> {version2})"
        assert requires_grad == requires_grad2, f"{name}: requires_grad changed"
        if grad is None or grad2 is None:
            assert grad is grad2, f"{name}: .grad changed from {grad} to {grad2}"
        else:
            assert torch.equal(grad, grad2), f"{name}: .grad changed"
    assert before.training == after.training
    assert torch.equal(before.rng, after.rng), "the global RNG state changed"
    assert before.grad_enabled == after.grad_enabled


Inputs = dict[str, Tensor]
Use = Callable[[Model, Inputs], object]


def _vector_fn(model: Model) -> Callable[[Tensor], Tensor]:
    return lambda x: model(x.unsqueeze(0)).squeeze()


def _line_fn(model: Model, inputs: Inputs) -> Callable[[Tensor], Tensor]:
    x, d = inputs["x"], inputs["d"]
    return lambda t: model((x + t * d).unsqueeze(0)).squeeze()


def _mse(out: Tensor, target: Tensor) -> Tensor:
    return nn.functional.mse_loss(out, target)


USES: dict[str, Use] = {
    "derivative": lambda m, i: hodfunc.derivative(_line_fn(m, i), 2)(i["t"]),
    "derivatives": lambda m, i: hodfunc.derivatives(_line_fn(m, i), 3)(i["t"]),
    "partial": lambda m, i: hodfunc.partial(_vector_fn(m), (0, 2, 2))(i["x"]),
    "partials": lambda m, i: hodfunc.partials(_vector_fn(m), [(), (0, 1), (2, 2)])(i["x"]),
    "derivative_tensor": lambda m, i: hodfunc.derivative_tensor(_vector_fn(m), 2)(i["x"]),
    "directional_derivative": lambda m, i: hodfunc.directional_derivative(_vector_fn(m), 2)(
        i["x"], i["d"]
    ),
    "jacobian": lambda m, i: hodfunc.jacobian(_vector_fn(m))(i["x"]),
    "hessian": lambda m, i: hodfunc.hessian(_vector_fn(m), chunk_size=2)(i["x"]),
    "hvp": lambda m, i: hodfunc.hvp(_vector_fn(m))(i["x"], i["d"]),
    "laplacian": lambda m, i: hodfunc.laplacian(_vector_fn(m))(i["x"]),
    "batched": lambda m, i: hodfunc.batched(hodfunc.derivative(_line_fn(m, i), 1), chunk_size=2)(
        i["ts"]
    ),
    "per_sample_grads": lambda m, i: hodfunc.per_sample_grads(m, _mse, i["X"], i["Y"]),
    "imperative.derivative": lambda m, i: imperative.derivative(_line_fn(m, i), 2)(i["t"]),
    "imperative.derivatives": lambda m, i: imperative.derivatives(_line_fn(m, i), 3)(i["t"]),
    "imperative.partial": lambda m, i: imperative.partial(_vector_fn(m), (0, 2, 2))(i["x"]),
    "imperative.hessian": lambda m, i: imperative.hessian(_vector_fn(m))(i["x"]),
    "imperative.per_sample_grads": lambda m, i: imperative.per_sample_grads(
        m, _mse, i["X"], i["Y"]
    ),
}


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Model, Inputs, bool]:
    """A model in a random state, the caller's inputs, and whether to call under no_grad."""
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Model(draw(st.sampled_from(sorted(ACTIVATIONS))))
    assert model.norm.running_mean is not None
    assert model.norm.running_var is not None
    with torch.no_grad():
        model.norm.running_mean.normal_(generator=g)
        model.norm.running_var.uniform_(0.5, 2.0, generator=g)
    for name, module in model.named_modules():
        module.training = draw(st.booleans(), label=f"{name or 'model'}.training")
    model.norm.eval()  # training-mode BatchNorm is refused; tested on its own below
    for name, p in model.named_parameters():
        p.requires_grad_(draw(st.booleans(), label=f"{name}.requires_grad"))
        if draw(st.booleans(), label=f"{name}.grad is set"):
            p.grad = torch.randn(p.shape, dtype=p.dtype, generator=g)
    inputs: Inputs = {
        "x": torch.randn(3, dtype=torch.float64, generator=g),
        "d": torch.randn(3, dtype=torch.float64, generator=g),
        "t": torch.tensor(0.25, dtype=torch.float64),
        "ts": torch.randn(5, dtype=torch.float64, generator=g),
        "X": torch.randn(4, 3, dtype=torch.float64, generator=g),
        "Y": torch.randn(4, 1, dtype=torch.float64, generator=g),
    }
    for name, t in inputs.items():
        if draw(st.booleans(), label=f"{name}.requires_grad"):
            t.requires_grad_(True)
            if draw(st.booleans(), label=f"{name}.grad is set"):
                t.grad = torch.randn(t.shape, dtype=t.dtype, generator=g)
    return model, inputs, draw(st.booleans(), label="under no_grad")


@pytest.mark.parametrize("use", list(USES), ids=list(USES))
@settings(max_examples=8)  # x 16 functions
@given(scenario=scenarios())
def test_public_functions_change_nothing_the_caller_owns(
    use: str, scenario: tuple[Model, Inputs, bool]
) -> None:
    model, inputs, no_grad = scenario
    before = snapshot(model, inputs)
    with torch.no_grad() if no_grad else contextlib.nullcontext(), warnings.catch_warnings():
        # Purity is about state: method="auto" may fall back (BatchNorm has no Taylor rule).
        warnings.simplefilter("ignore", hodfunc.FallbackWarning)
        result = USES[use](model, inputs)
    assert_same(before, snapshot(model, inputs))
    if isinstance(result, dict):  # per-sample gradients: one entry per trainable parameter
        assert set(result) == {k for k, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    "per_sample",
    [hodfunc.per_sample_grads, imperative.per_sample_grads],
    ids=["functional", "imperative"],
)
def test_a_refused_call_changes_nothing_either(per_sample: Callable[..., object]) -> None:
    model = Model("tanh")
    model.train()  # BatchNorm in training mode: refused
    inputs = {
        "X": torch.randn(4, 3, dtype=torch.float64),
        "Y": torch.randn(4, 1, dtype=torch.float64),
    }
    before = snapshot(model, inputs)
    with pytest.raises(hodfunc.NonFunctionalModuleError, match="BatchNorm"):
        per_sample(model, _mse, inputs["X"], inputs["Y"])
    assert_same(before, snapshot(model, inputs))
