"""PINN residuals and training steps: hodfunc against the ``create_graph`` code tutorials write.

Each residual is written twice. Once as tutorials write it: the input columns ``(N, 1)`` each
require grad, and a helper around ``torch.autograd.grad(..., create_graph=True)`` is chained on
them. Once with hodfunc: ``hodfunc.partials`` (or ``hodfunc.laplacian``) under ``torch.func.vmap``,
the transform built inside the loss on every call, as a tutorial would write it. The network is a
tanh MLP of width 64 with 4 hidden layers, float32, at N = 2048 collocation points.

For each case the script first checks, in float64, that both codes give the same residual and the
same weight gradient of the loss (to 1e-10 relative). It then times, interleaved:

- the residual alone (weights not requiring grad);
- the residual with the weights requiring grad (the forward of a training step);
- the training step: the residual, its mean square, and the gradient over every weight.

A ratio above 1 means hodfunc is faster than the create_graph code in the same round.
jet-for-pytorch's Laplacian is timed on the Poisson case when it imports (it needs Python >= 3.12).

    python benchmarks/bench_pinn.py [--quick] [--threads 1,2] [--cases wave,poisson20] [--nested]
        [--profile allen_cahn]

Then, at 1 thread: a mixed against a pure second partial, a transform built inside the loss
against one built once, and the Allen-Cahn residual written as a plain-torch jet (the same rows
``partials`` propagates, without the interpreter): the eager floor of the algorithm.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from _common import interleaved_medians, jet_module, table, write_json
from torch import Tensor, nn
from torch.func import functional_call, vmap

import hodfunc

WIDTH = 64
HIDDEN = 4
POINTS = 2048

Params = dict[str, Tensor]
Columns = list[Tensor]


def network(inputs: int, outputs: int, dtype: torch.dtype) -> nn.Sequential:
    """The seeded tanh MLP of every case."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    width = inputs
    for _ in range(HIDDEN):
        layers += [nn.Linear(width, WIDTH), nn.Tanh()]
        width = WIDTH
    layers.append(nn.Linear(width, outputs))
    return nn.Sequential(*layers).to(dtype)


def cg(y: Tensor, x: Tensor) -> Tensor:
    """The tutorials' helper: dy/dx on columns, keeping the graph."""
    (g,) = torch.autograd.grad(y, x, torch.ones_like(y), create_graph=True)
    return g


@dataclass(frozen=True)
class Case:
    """A PDE residual written both ways."""

    name: str
    inputs: int
    outputs: int
    create_graph: Callable[[nn.Module, Columns], Tensor]
    """The tutorial code: the network and the input columns (each requiring grad)."""
    hodfunc: Callable[[Callable[[Tensor], Tensor], Tensor], Tensor]
    """The hodfunc code: the network as a function of one point, and the points ``(N, d)``."""


def _column(net: nn.Module, cols: Columns) -> Tensor:
    out: Tensor = net(torch.cat(cols, dim=1))
    return out


# ------------------------------------------------------------------ Navier-Stokes (x, y, t)

NU = 0.01


def ns_create_graph(net: nn.Module, cols: Columns) -> Tensor:
    x, y, t = cols
    out = _column(net, cols)
    u, v, p = out[:, 0:1], out[:, 1:2], out[:, 2:3]
    u_x, u_y, u_t = cg(u, x), cg(u, y), cg(u, t)
    v_x, v_y, v_t = cg(v, x), cg(v, y), cg(v, t)
    p_x, p_y = cg(p, x), cg(p, y)
    u_xx, u_yy = cg(u_x, x), cg(u_y, y)
    v_xx, v_yy = cg(v_x, x), cg(v_y, y)
    f_u = u_t + u * u_x + v * u_y + p_x - NU * (u_xx + u_yy)
    f_v = v_t + u * v_x + v * v_y + p_y - NU * (v_xx + v_yy)
    return torch.cat([f_u, f_v, u_x + v_y], dim=1)


NS_TERMS = {"q": (), "x": (0,), "y": (1,), "t": (2,), "xx": (0, 0), "yy": (1, 1)}


def ns_hodfunc(f: Callable[[Tensor], Tensor], X: Tensor) -> Tensor:
    d = vmap(hodfunc.partials(f, NS_TERMS))(X)  # each (N, 3): the partials of (u, v, p)
    (u, v, _), (u_x, v_x, p_x), (u_y, v_y, p_y) = d["q"].T, d["x"].T, d["y"].T
    (u_t, v_t, _), lap = d["t"].T, (d["xx"] + d["yy"]).T
    f_u = u_t + u * u_x + v * u_y + p_x - NU * lap[0]
    f_v = v_t + u * v_x + v * v_y + p_y - NU * lap[1]
    return torch.stack([f_u, f_v, u_x + v_y], dim=1)


# ------------------------------------------------------------------ wave (x, t)

C = 2.0


def wave_create_graph(net: nn.Module, cols: Columns) -> Tensor:
    x, t = cols
    u = _column(net, cols)
    return cg(cg(u, t), t) - C**2 * cg(cg(u, x), x)


def wave_hodfunc(f: Callable[[Tensor], Tensor], X: Tensor) -> Tensor:
    u_tt, u_xx = vmap(hodfunc.partials(lambda z: f(z)[0], [(1, 1), (0, 0)]))(X)
    return (u_tt - C**2 * u_xx).unsqueeze(1)


# ------------------------------------------------------------------ Allen-Cahn (x, t)

EPS = 0.01


def allen_cahn_create_graph(net: nn.Module, cols: Columns) -> Tensor:
    x, t = cols
    u = _column(net, cols)
    return cg(u, t) - EPS * cg(cg(u, x), x) + u**3 - u


def allen_cahn_hodfunc(f: Callable[[Tensor], Tensor], X: Tensor) -> Tensor:
    d = vmap(hodfunc.partials(lambda z: f(z)[0], {"u": (), "u_t": (1,), "u_xx": (0, 0)}))(X)
    u = d["u"]
    return (d["u_t"] - EPS * d["u_xx"] + u**3 - u).unsqueeze(1)


# ------------------------------------------------------------------ Helmholtz (x, y)

K = 4.0


def _forcing(X: Tensor) -> Tensor:
    return torch.sin(math.pi * X[:, 0:1]) * torch.sin(4 * math.pi * X[:, 1:2])


def helmholtz_create_graph(net: nn.Module, cols: Columns) -> Tensor:
    x, y = cols
    u = _column(net, cols)
    q = _forcing(torch.cat(cols, dim=1).detach())
    return cg(cg(u, x), x) + cg(cg(u, y), y) + K**2 * u - q


def helmholtz_hodfunc(f: Callable[[Tensor], Tensor], X: Tensor) -> Tensor:
    d = vmap(hodfunc.partials(lambda z: f(z)[0], {"u": (), "u_xx": (0, 0), "u_yy": (1, 1)}))(X)
    return (d["u_xx"] + d["u_yy"] + K**2 * d["u"]).unsqueeze(1) - _forcing(X)


# ------------------------------------------------------------------ biharmonic plate (x, y)


def biharmonic_create_graph(net: nn.Module, cols: Columns) -> Tensor:
    x, y = cols
    u = _column(net, cols)
    u_xx, u_yy = cg(cg(u, x), x), cg(cg(u, y), y)
    u_xxxx = cg(cg(u_xx, x), x)
    u_xxyy = cg(cg(u_xx, y), y)
    u_yyyy = cg(cg(u_yy, y), y)
    return u_xxxx + 2 * u_xxyy + u_yyyy - 1.0


BIHARMONIC_TERMS = [(0, 0, 0, 0), (0, 0, 1, 1), (1, 1, 1, 1)]


def biharmonic_hodfunc(f: Callable[[Tensor], Tensor], X: Tensor) -> Tensor:
    u_xxxx, u_xxyy, u_yyyy = vmap(hodfunc.partials(lambda z: f(z)[0], BIHARMONIC_TERMS))(X)
    return (u_xxxx + 2 * u_xxyy + u_yyyy - 1.0).unsqueeze(1)


# ------------------------------------------------------------------ Poisson in 20-D


def poisson_create_graph(net: nn.Module, cols: Columns) -> Tensor:
    u = _column(net, cols)
    lap = sum(cg(cg(u, x), x) for x in cols)
    assert isinstance(lap, Tensor)
    return lap + 1.0


def poisson_hodfunc(f: Callable[[Tensor], Tensor], X: Tensor) -> Tensor:
    return vmap(hodfunc.laplacian(lambda z: f(z)[0]))(X).unsqueeze(1) + 1.0


CASES = {
    case.name: case
    for case in [
        Case("navier_stokes", 3, 3, ns_create_graph, ns_hodfunc),
        Case("wave", 2, 1, wave_create_graph, wave_hodfunc),
        Case("allen_cahn", 2, 1, allen_cahn_create_graph, allen_cahn_hodfunc),
        Case("helmholtz", 2, 1, helmholtz_create_graph, helmholtz_hodfunc),
        Case("biharmonic", 2, 1, biharmonic_create_graph, biharmonic_hodfunc),
        Case("poisson20", 20, 1, poisson_create_graph, poisson_hodfunc),
    ]
}


# ------------------------------------------------------------------ the two codes as callables


def columns(X: Tensor) -> Columns:
    return [X[:, i : i + 1].clone().requires_grad_() for i in range(X.shape[1])]


def create_graph_residual(case: Case, net: nn.Module, X: Tensor) -> Tensor:
    return case.create_graph(net, columns(X))


def hodfunc_residual(case: Case, net: nn.Module, params: Mapping[str, Tensor], X: Tensor) -> Tensor:
    def f(z: Tensor) -> Tensor:
        out: Tensor = functional_call(net, dict(params), (z,))
        return out

    return case.hodfunc(f, X)


def create_graph_step(case: Case, net: nn.Module, X: Tensor) -> tuple[Tensor, ...]:
    loss = create_graph_residual(case, net, X).pow(2).mean()
    return torch.autograd.grad(loss, list(net.parameters()), materialize_grads=True)


def hodfunc_step(case: Case, net: nn.Module, X: Tensor) -> tuple[Tensor, ...]:
    params = dict(net.named_parameters())
    loss = hodfunc_residual(case, net, params, X).pow(2).mean()
    return torch.autograd.grad(loss, list(params.values()), materialize_grads=True)


def points(case: Case, n: int, dtype: torch.dtype) -> Tensor:
    return torch.rand(n, case.inputs, generator=torch.Generator().manual_seed(1), dtype=dtype)


def check(case: Case) -> tuple[float, float]:
    """Relative differences in float64 (residual, weight gradient) on 256 points."""
    net = network(case.inputs, case.outputs, torch.float64)
    X = points(case, 256, torch.float64)
    detached = {k: v.detach() for k, v in net.named_parameters()}
    ref = create_graph_residual(case, net, X).detach()
    got = hodfunc_residual(case, net, detached, X)
    res = float((got - ref).abs().max() / ref.abs().max())
    g_ref = create_graph_step(case, net, X)
    g_got = hodfunc_step(case, net, X)
    grad = max(
        float((a - b).abs().max() / b.abs().max()) for a, b in zip(g_got, g_ref, strict=True)
    )
    return res, grad


def time_case(case: Case, repeats: int, nested: bool) -> dict[str, float]:
    net = network(case.inputs, case.outputs, torch.float32)
    X = points(case, POINTS, torch.float32)
    detached = {k: v.detach() for k, v in net.named_parameters()}
    frozen = network(case.inputs, case.outputs, torch.float32).requires_grad_(False)
    fns: dict[str, Callable[[], object]] = {
        "cg residual": lambda: create_graph_residual(case, frozen, X),
        "hf residual": lambda: hodfunc_residual(case, net, detached, X),
        "cg residual, weights grad": lambda: create_graph_residual(case, net, X),
        "hf residual, weights grad": lambda: hodfunc_residual(
            case, net, dict(net.named_parameters()), X
        ),
        "cg step": lambda: create_graph_step(case, net, X),
        "hf step": lambda: hodfunc_step(case, net, X),
    }
    if nested:

        def nested_residual() -> Tensor:
            with hodfunc_method("nested"):
                return hodfunc_residual(case, net, detached, X)

        fns["nested residual"] = nested_residual
    jet = jet_module() if case.name == "poisson20" else None
    if jet is not None:
        fns["jet step"] = lambda: jet_step(jet, net, X)
    return interleaved_medians(fns, repeats=repeats)


class hodfunc_method:  # noqa: N801  (a context manager used like a function)
    """Run the cases' hodfunc code with another ``method=`` (the cases pass none: ``"auto"``)."""

    def __init__(self, method: hodfunc.Method) -> None:
        self.method = method
        self.saved: dict[str, object] = {}

    def __enter__(self) -> None:
        for name in ("partials", "laplacian"):
            original = getattr(hodfunc, name)
            self.saved[name] = original

            def with_method(
                *args: object, _f: object = original, _m: str = self.method, **kwargs: object
            ) -> object:
                return _f(*args, method=_m, **kwargs)  # type: ignore[operator]

            setattr(hodfunc, name, with_method)

    def __exit__(self, *exc: object) -> None:
        for name, original in self.saved.items():
            setattr(hodfunc, name, original)


def jet_step(jet: object, net: nn.Module, X: Tensor) -> tuple[Tensor, ...]:
    """jet-for-pytorch's collapsed Laplacian in the Poisson training step."""
    laplacian = getattr(jet, "laplacian")  # noqa: B009  (an optional module: no stubs)
    lap: Tensor = laplacian(lambda z: net(z).squeeze(-1), X)
    loss = (lap + 1.0).pow(2).mean()
    return torch.autograd.grad(loss, list(net.parameters()), materialize_grads=True)


def allen_cahn_plain_taylor(net: nn.Sequential, X: Tensor) -> Tensor:
    """The Allen-Cahn residual from the same multivariate jet ``partials`` propagates (rows 1, t,
    x, xx), hand-written in plain torch for this network: the algorithm's eager floor, without
    the interpreter, the trace cache and the checks. Not a hodfunc API."""
    linears = [m for m in net if isinstance(m, nn.Linear)]
    w, b = linears[0].weight, linears[0].bias
    value = X @ w.T + b
    first = torch.stack([w[:, 1], w[:, 0]]).unsqueeze(1)  # t, x: the same at every point
    second: Tensor | None = None  # xx: zero while the jet is affine
    for layer in linears[1:]:
        y = torch.tanh(value)
        d1 = 1 - y * y
        d2 = -y * d1
        curvature = d2 * first[1] ** 2
        second = curvature if second is None else d1 * second + curvature
        first = d1 * first
        w, b = layer.weight, layer.bias
        value, first, second = y @ w.T + b, first @ w.T, second @ w.T
    assert second is not None
    u, u_t, u_xx = value[:, 0], first[0, :, 0], 2 * second[:, 0]
    return (u_t - EPS * u_xx + u**3 - u).unsqueeze(1)


def time_details(repeats: int) -> dict[str, float]:
    """The smaller questions: a mixed against a pure second partial, a transform built in the
    loss against one built once, and the plain-torch floor of the Allen-Cahn jet."""
    net = network(2, 1, torch.float32).requires_grad_(False)
    X = points(CASES["allen_cahn"], POINTS, torch.float32)

    def f(z: Tensor) -> Tensor:
        out: Tensor = net(z)[0]
        return out

    terms = {"u": (), "u_t": (1,), "u_xx": (0, 0)}
    once = vmap(hodfunc.partials(f, terms))
    fns: dict[str, Callable[[], object]] = {
        "partial (0, 0)": lambda: vmap(hodfunc.partial(f, wrt=(0, 0)))(X),
        "partial (0, 1)": lambda: vmap(hodfunc.partial(f, wrt=(0, 1)))(X),
        "partials [(0, 0)]": lambda: vmap(hodfunc.partials(f, [(0, 0)]))(X),
        "partials [(0, 1)]": lambda: vmap(hodfunc.partials(f, [(0, 1)]))(X),
        "built once": lambda: once(X),
        "built in the loss": lambda: vmap(hodfunc.partials(lambda z: net(z)[0], terms))(X),
        "cg allen_cahn": lambda: create_graph_residual(CASES["allen_cahn"], net, X),
        "hf allen_cahn": lambda: hodfunc_residual(
            CASES["allen_cahn"], net, dict(net.named_parameters()), X
        ),
        "plain-torch jet allen_cahn": lambda: allen_cahn_plain_taylor(net, X),
    }
    return interleaved_medians(fns, repeats=repeats)


def profile_step(case: Case) -> str:
    """``torch.profiler``'s top ops of one hodfunc training step (forward and backward)."""
    net = network(case.inputs, case.outputs, torch.float32)
    X = points(case, POINTS, torch.float32)
    hodfunc_step(case, net, X)
    with torch.profiler.profile(record_shapes=True) as prof:
        hodfunc_step(case, net, X)
    averages = prof.key_averages(group_by_input_shape=True)
    return str(averages.table(sort_by="self_cpu_time_total", row_limit=12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    parser.add_argument("--nested", action="store_true", help='also time method="nested"')
    parser.add_argument("--profile", default="", help="print torch.profiler's table of one step")
    args = parser.parse_args()
    repeats = 5 if args.quick else 11
    names = args.cases.split(",")
    for name in names:
        res, grad = check(CASES[name])
        print(f"{name}: float64 residual rel. diff {res:.1e}, weight gradient {grad:.1e}")
        assert res < 1e-10, (name, res)
        assert grad < 1e-10, (name, grad)
    if jet_module() is None:
        print("jet-for-pytorch: not importable here (it needs Python >= 3.12); not timed")
    rows: list[dict[str, object]] = []
    lines = []
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        for name in names:
            t = time_case(CASES[name], repeats, args.nested)
            row: dict[str, object] = {"case": name, "threads": threads, **t}
            rows.append(row)
            line = [
                name,
                str(threads),
                f"{t['cg residual'] * 1e3:.1f}",
                f"{t['cg residual'] / t['hf residual']:.2f}",
                f"{t['cg residual, weights grad'] / t['hf residual, weights grad']:.2f}",
                f"{t['cg step'] * 1e3:.1f}",
                f"{t['cg step'] / t['hf step']:.2f}",
                f"{t['cg residual'] / t['nested residual']:.2f}" if "nested residual" in t else "-",
                f"{t['jet step'] / t['hf step']:.2f}" if "jet step" in t else "-",
            ]
            lines.append(line)
            print("  ".join(line), flush=True)
    headers = [
        "case",
        "threads",
        "cg residual ms",
        "residual x",
        "with weights grad x",
        "cg step ms",
        "step x",
        "nested residual x",
        "step vs jet x",
    ]
    print()
    print(table(headers, lines))
    torch.set_num_threads(1)
    d = time_details(repeats)
    rows.append({"details": d})
    print()
    print(
        f"mixed / pure second partial: partial {d['partial (0, 1)'] / d['partial (0, 0)']:.2f}, "
        f"partials {d['partials [(0, 1)]'] / d['partials [(0, 0)]']:.2f}"
    )
    print(
        f"transform built in the loss / built once: {d['built in the loss'] / d['built once']:.2f}"
    )
    print(
        "allen_cahn residual against create_graph: hodfunc "
        f"{d['cg allen_cahn'] / d['hf allen_cahn']:.2f}x, the plain-torch jet (the algorithm's "
        f"eager floor) {d['cg allen_cahn'] / d['plain-torch jet allen_cahn']:.2f}x"
    )
    if args.profile:
        print()
        print(f"profile of one {args.profile} training step (1 thread):")
        print(profile_step(CASES[args.profile]))
    print(f"results: {write_json('bench_pinn', rows)}")


if __name__ == "__main__":
    main()
