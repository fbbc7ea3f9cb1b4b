"""The seed documents' pitfalls, as executable facts about torch 2.x, each next to hodfunc's answer.

Every test asserts exact numbers, so it fails if torch ever changes the behaviour it documents.
The seeds are ``../shared/seeds``: ``000`` is the article claiming a second derivative "comes out
zero", ``001`` the notebook taking derivatives of ``2x^3`` and of a small ReLU network.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

import hodfunc
from hodfunc import imperative
from hodfunc.imperative import backward

# ---------------------------------------------------------------------------------------------
# The article (seed 000)


def test_second_grad_without_create_graph_raises_instead_of_returning_zero() -> None:
    # Example 1 of the article claims d2y/dx2 "will be 0.0". torch refuses instead.
    x = torch.tensor(3.0, requires_grad=True)
    y = x**2
    dy_dx = torch.autograd.grad(y, x, create_graph=False)[0]
    assert dy_dx.item() == 6.0
    assert not dy_dx.requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        torch.autograd.grad(dy_dx, x, create_graph=False)


def test_create_graph_gives_the_second_derivative() -> None:
    # Example 2, which the article gets right, and hodfunc's two paths.
    x = torch.tensor(3.0, requires_grad=True)
    dy_dx = torch.autograd.grad(x**2, x, create_graph=True)[0]
    d2y_dx2 = torch.autograd.grad(dy_dx, x)[0]
    assert (dy_dx.item(), d2y_dx2.item()) == (6.0, 2.0)
    square: Callable[[Tensor], Tensor] = lambda x: x**2  # noqa: E731
    assert hodfunc.derivatives(square, 2)(torch.tensor(3.0)).tolist() == [9.0, 6.0, 2.0]
    assert imperative.derivatives(square, 2)(torch.tensor(3.0)).tolist() == [9.0, 6.0, 2.0]


def _backward_twice(reset: bool) -> tuple[float, float]:
    """Example 3: ``backward(create_graph=True)``, then ``backward`` on the gradient it stored."""
    x = torch.tensor(3.0, requires_grad=True)
    with warnings.catch_warnings():  # torch warns once per process about a reference cycle
        warnings.filterwarnings("ignore", "Using backward.. with create_graph=True", UserWarning)
        backward(x**2, create_graph=True)
    assert x.grad is not None
    first = x.grad
    first_value = first.item()
    if reset:
        x.grad = None
    backward(first)
    assert x.grad is not None
    return first_value, x.grad.item()


def test_backward_twice_without_reset_accumulates_8_not_2() -> None:
    assert _backward_twice(reset=True) == (6.0, 2.0)  # the article's code, which resets
    assert _backward_twice(reset=False) == (6.0, 8.0)  # forgetting the reset: 6 + 2


# ---------------------------------------------------------------------------------------------
# ReLU: the real reason a second derivative comes out zero


def _relu_net() -> nn.Sequential:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Linear(1, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1)
        ).double()


def test_relu_network_has_zero_second_and_higher_derivatives_almost_everywhere() -> None:
    net = _relu_net()
    f: Callable[[Tensor], Tensor] = lambda x: net(x.reshape(1)).squeeze()  # noqa: E731
    points = torch.linspace(-3, 3, 7, dtype=torch.float64) + 0.0123  # off the kinks
    orders = torch.func.vmap(hodfunc.derivatives(f, 4, method="nested"))(points)  # (points, 5)
    assert orders[:, 1].abs().min() > 0  # the slope is not zero ...
    assert torch.equal(orders[:, 2:], torch.zeros_like(orders[:, 2:]))  # ... every higher one is
    for x in points[:2]:
        assert torch.equal(imperative.derivatives(f, 4)(x)[2:], torch.zeros(3, dtype=torch.float64))
    # By default hodfunc also says why, naming the op.
    with pytest.warns(hodfunc.PiecewiseLinearWarning, match="aten.relu"):
        default = hodfunc.derivatives(f, 4)(points[0])
    # value and slope agree to rounding (Taylor and nested sum the layers in another order) ...
    torch.testing.assert_close(default[:2], orders[0, :2], rtol=1e-12, atol=1e-15)
    assert torch.equal(default[2:], torch.zeros(3, dtype=torch.float64))  # ... the rest is zero


def test_a_smooth_network_has_nonzero_second_derivatives() -> None:
    net = _relu_net()
    net[1] = nn.Tanh()
    net[3] = nn.Tanh()
    f: Callable[[Tensor], Tensor] = lambda x: net(x.reshape(1)).squeeze()  # noqa: E731
    assert hodfunc.derivative(f, 2)(torch.tensor(0.5, dtype=torch.float64)) != 0


# ---------------------------------------------------------------------------------------------
# The notebook (seed 001), cell 117: f = 2x^3 at x = -2


def test_notebook_cell_117_replayed_prints_its_numbers() -> None:
    x = torch.tensor(-2.0, requires_grad=True)
    f = 2 * x**3
    printed = [f.item()]
    backward(f, retain_graph=True)
    assert x.grad is not None
    printed.append(x.grad.item())
    for order in (2, 3, 4):
        x.grad.zero_()
        d = f
        for _ in range(order - 1):
            d = torch.autograd.grad(d, x, create_graph=True)[0]
        backward(d)
        printed.append(x.grad.item())
    assert printed == [-16.0, 24.0, -24.0, 12.0, 0.0]
    cube: Callable[[Tensor], Tensor] = lambda x: 2 * x**3  # noqa: E731
    assert hodfunc.derivatives(cube, 4)(torch.tensor(-2.0)).tolist() == printed


def test_notebook_markdown_sign_error() -> None:
    # The markdown: d2f/dx2 = 12x, "when x = -2 => 12 * 2 = 24". It evaluated 12x at +2.
    cube: Callable[[Tensor], Tensor] = lambda x: 2 * x**3  # noqa: E731
    second = hodfunc.derivative(cube, 2)
    assert second(torch.tensor(-2.0)).item() == 12 * -2 == -24  # the printed -24 is right
    assert second(torch.tensor(2.0)).item() == 12 * 2 == 24  # the markdown's 24 is at x = +2


# ---------------------------------------------------------------------------------------------
# The notebook's network, cells 56 (definition), 57, 60 (run twice) and 61


class Net(nn.Module):
    """The notebook's cell 56, verbatim but typed."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Linear(2, 5)
        self.out = nn.Linear(5, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.mlp(x**2)
        x = nn.functional.relu(x)
        out: Tensor = self.out(x)
        return out


def _net() -> Net:
    # Seed 1 leaves 3 of the 5 units active at x = (1, 1), as the notebook's left 2 of 5. The
    # notebook's weights are unknown (no seed); hodfunc._cli._demo.notebook_net fits them to its
    # prints.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        return Net()


def _cell_60(net: Net, inp: Tensor) -> list[Tensor]:
    """Cell 60 as written: one ``input.grad.zero_()``, two ``backward`` calls; what it prints."""
    assert inp.grad is not None
    inp.grad.zero_()
    f = net(inp)
    gx = torch.autograd.grad(f, inp, create_graph=True)[0]
    printed = []
    for i in range(2):
        backward(gx[i], retain_graph=True)
        printed.append(inp.grad.clone())
    return printed


def test_notebook_hessian_row_1_is_row_0_plus_row_1() -> None:
    net = _net()
    inp = torch.tensor([1.0] * 2, requires_grad=True)
    backward(net(inp).sum())  # cell 57
    printed = _cell_60(net, inp)
    rows = imperative.hessian(lambda x: net(x).squeeze())(inp)  # the same products, .grad reset
    assert torch.equal(printed[0], rows[0])
    assert torch.equal(printed[1], rows[0] + rows[1])
    assert not torch.equal(rows[0] + rows[1], rows[1])  # the relation has teeth: row 0 is not 0
    true = hodfunc.hessian(lambda x: net(x).squeeze())(inp.detach())
    torch.testing.assert_close(true, rows, rtol=1e-6, atol=1e-7)
    # Here H is diagonal (ReLU'' = 0), so the printed "row 1" is exactly the gradient of cell 57.
    assert torch.equal(printed[1], hodfunc.jacobian(lambda x: net(x).squeeze())(inp.detach()))


def test_notebook_weight_grad_is_exactly_5x_and_the_true_derivative_is_0() -> None:
    net = _net()
    inp = torch.tensor([1.0] * 2, requires_grad=True)
    backward(net(inp).sum())  # cell 57: + 1 x gx into mlp.weight.grad
    _cell_60(net, inp)  # the counters jump 57 -> 60: cell 60 ran twice, + 2 x gx each time
    _cell_60(net, inp)
    assert inp.grad is not None
    inp.grad.zero_()  # cell 61
    f = net(inp)
    gx = torch.autograd.grad(f, net.mlp.weight, create_graph=True)[0]
    backward((gx**2).sum())
    printed = net.mlp.weight.grad
    assert printed is not None
    g = gx.detach()
    assert g.abs().sum() > 0  # some units are active ...
    assert (g == 0).any()  # ... and some are not
    assert torch.equal(printed, (g + 2 * g) + 2 * g)  # 1 + 2 + 2, in the order accumulated
    assert torch.equal(printed, 5 * g)  # exact for this seed; in general within one ulp of 5 gx

    params = {k: p.detach() for k, p in net.named_parameters()}
    x = inp.detach()

    def f_of_weight(w: Tensor) -> Tensor:
        out: Tensor = functional_call(net, {**params, "mlp.weight": w}, (x,))
        return out.squeeze()

    def gx_squared(w: Tensor) -> Tensor:
        return (hodfunc.jacobian(f_of_weight)(w) ** 2).sum()

    w = params["mlp.weight"]
    assert torch.equal(hodfunc.jacobian(f_of_weight)(w), g)
    true = hodfunc.jacobian(gx_squared)(w)
    assert torch.equal(true, torch.zeros_like(w))  # ReLU' is piecewise constant
    assert torch.equal(hodfunc.hessian(f_of_weight)(w), torch.zeros(5, 2, 5, 2))
