"""``method="compiled"`` against eager Taylor mode (``method="taylor"``), side by side in one run.

Cases (issue 14): the scalar tanh MLP of bench_taylor at one point, orders 4, 8 and 16; 4096
points at order 8; the collapsed Laplacian of bench_taylor_laplacian with its matmul floor; the
PINN training steps of bench_pinn. JAX ``jit(jet)`` on the same MLP when ``import jax`` works
(skipped with the reason otherwise); jet-for-pytorch when ``import jet`` works (it needs
Python >= 3.12). Every compiled result is checked against eager before it is timed, and each
case's first compiled call (trace, inductor, run) is reported as its compile time.

    python benchmarks/bench_compile.py [--quick] [--threads N] [--cases a,b]
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from collections.abc import Callable

import bench_pinn
import torch
from _common import (
    interleaved_medians,
    laplacian_points,
    laplacian_weights,
    matmul_floor,
    mlp_weights,
    table,
    tanh_mlp,
    write_json,
)
from torch import Tensor

import hodfunc
from hodfunc._taylor import _compiled

WIDTH = 64
LAPLACIAN_DIMS = [50, 256, 256, 256, 1]


def scalar_mlp(dtype: torch.dtype = torch.float32) -> Callable[[Tensor], Tensor]:
    w1, b1, w2, b2, w3 = mlp_weights(WIDTH, dtype)

    def f(x: Tensor) -> Tensor:
        return w3 @ torch.tanh(w2 @ torch.tanh(w1 @ x.reshape(1) + b1) + b2)

    return f


def jax_jet(order: int, points: int) -> tuple[Callable[[], object] | None, str]:
    """JAX ``jit(jet)`` of the same MLP (same weights), or ``None`` and why not."""
    if importlib.util.find_spec("jax") is None:
        return None, "jax not installed"
    # imported by name: an optional module without stubs here (JAX 0.10 on this machine kind)
    jax = importlib.import_module("jax")
    jnp = importlib.import_module("jax.numpy")
    jet = importlib.import_module("jax.experimental.jet").jet

    w1, b1, w2, b2, w3 = (jnp.asarray(t.numpy()) for t in mlp_weights(WIDTH, torch.float32))

    def f(x: object) -> object:
        return w3 @ jnp.tanh(w2 @ jnp.tanh(w1 @ jnp.reshape(x, (1,)) + b1) + b2)

    series = [1.0] + [0.0] * (order - 1)

    def coefficients(x: object) -> object:
        value, terms = jet(f, (x,), ((jnp.asarray(series[0]), *map(jnp.asarray, series[1:])),))
        return jnp.stack([value, *terms])

    run = jax.jit(coefficients if points == 1 else jax.vmap(coefficients))
    x = jnp.asarray(0.3) if points == 1 else jnp.linspace(-1.0, 1.0, points)
    run(x).block_until_ready()
    return (lambda: run(x).block_until_ready()), ""


def first_call(fn: Callable[[], object]) -> float:
    """Seconds of ``fn``'s first call (for a compiled transform: its compilation)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def relative(got: Tensor, want: Tensor) -> float:
    scale = want.abs().reshape(want.shape[0], -1).amax(1).clamp(min=1e-30)
    return float(((got - want).abs().reshape(want.shape[0], -1).amax(1) / scale).max())


def mlp_case(order: int, points: int, repeats: int) -> dict[str, object]:
    f = scalar_mlp()
    eager = hodfunc.derivatives(f, order, method="taylor")
    compiled = hodfunc.derivatives(f, order, method="compiled")
    if points == 1:
        x = torch.tensor(0.3)
        fns: dict[str, Callable[[], object]] = {
            "eager": lambda: eager(x),
            "compiled": lambda: compiled(x),
        }
    else:
        xs = torch.linspace(-1, 1, points)
        fns = {
            "eager": lambda: torch.func.vmap(eager)(xs),
            "compiled": lambda: torch.func.vmap(compiled)(xs),
        }
    row: dict[str, object] = {"case": f"mlp order {order}, {points} pt", "compile_s": 0.0}
    row["compile_s"] = first_call(fns["compiled"])
    got, want = torch.as_tensor(fns["compiled"]()), torch.as_tensor(fns["eager"]())
    row["max_rel_diff"] = relative(got, want)
    # both against float64 eager: a float32 difference is rounding where they err alike
    exact = hodfunc.derivatives(scalar_mlp(torch.float64), order, method="taylor")
    if points == 1:
        truth = exact(torch.tensor(0.3, dtype=torch.float64))
    else:
        truth = torch.func.vmap(exact)(torch.linspace(-1, 1, points, dtype=torch.float64))
    row["eager_vs_float64"] = relative(want.double(), truth)
    row["compiled_vs_float64"] = relative(got.double(), truth)
    jax_run, why = jax_jet(order, points)
    if jax_run is not None:
        fns["jax jit(jet)"] = jax_run
    else:
        row["jax"] = why
    row.update(interleaved_medians(fns, repeats=repeats))
    return row


def laplacian_case(points: int, repeats: int) -> dict[str, object]:
    layers = laplacian_weights(LAPLACIAN_DIMS, torch.float32)

    def f(x: Tensor) -> Tensor:
        return tanh_mlp(layers, x)

    X = laplacian_points(points, LAPLACIAN_DIMS[0])
    eager = torch.func.vmap(hodfunc.laplacian(f, method="taylor"))
    compiled = torch.func.vmap(hodfunc.laplacian(f, method="compiled"))
    row: dict[str, object] = {
        "case": f"laplacian {points} pt",
        "compile_s": first_call(lambda: compiled(X)),
    }
    row["max_rel_diff"] = float((compiled(X) - eager(X)).abs().max() / eager(X).abs().max())
    fns: dict[str, Callable[[], object]] = {
        "eager": lambda: eager(X),
        "compiled": lambda: compiled(X),
        "floor": matmul_floor(points, LAPLACIAN_DIMS[0]),
    }
    row.update(interleaved_medians(fns, repeats))
    return row


def pinn_case(name: str, repeats: int) -> dict[str, object]:
    case = bench_pinn.CASES[name]
    net = bench_pinn.network(case.inputs, case.outputs, torch.float32)
    X = bench_pinn.points(case, bench_pinn.POINTS, torch.float32)

    def eager() -> tuple[Tensor, ...]:
        with bench_pinn.hodfunc_method("taylor"):
            return bench_pinn.hodfunc_step(case, net, X)

    def compiled() -> tuple[Tensor, ...]:
        with bench_pinn.hodfunc_method("compiled"):
            return bench_pinn.hodfunc_step(case, net, X)

    row: dict[str, object] = {"case": f"pinn step {name}", "compile_s": first_call(compiled)}
    row["max_rel_diff"] = max(
        float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))
        for a, b in zip(compiled(), eager(), strict=True)
    )
    fns: dict[str, Callable[[], object]] = {
        "eager": eager,
        "compiled": compiled,
        "create_graph": lambda: bench_pinn.create_graph_step(case, net, X),
    }
    row.update(interleaved_medians(fns, repeats=repeats))
    return row


def _number(row: dict[str, object], key: str) -> float | None:
    value = row.get(key)
    return value if isinstance(value, float) else None


def _line(row: dict[str, object]) -> list[str]:
    """One table row: times in ms, ratios against compiled, compile time, differences."""
    eager, compiled = _number(row, "eager"), _number(row, "compiled")
    assert eager is not None
    assert compiled is not None

    def over(key: str, fmt: str) -> str:
        value = _number(row, key)
        return "-" if value is None else format(value / compiled, fmt)

    jax = _number(row, "jax jit(jet)")
    errors = [_number(row, "eager_vs_float64"), _number(row, "compiled_vs_float64")]
    return [
        str(row["case"]),
        f"{eager * 1e3:.3f}",
        f"{compiled * 1e3:.3f}",
        f"{eager / compiled:.2f}x",
        f"{compiled / jax:.1f}x" if jax is not None else str(row.get("jax", "-")),
        over("floor", ".0%"),
        over("create_graph", ".2f"),
        f"{_number(row, 'compile_s') or 0.0:.1f}",
        f"{_number(row, 'max_rel_diff') or 0.0:.1e}",
        "-" if None in errors else ", ".join(f"{e:.1e}" for e in errors if e is not None),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cases", default="mlp,batch,laplacian,pinn")
    parser.add_argument("--pinn", default=",".join(bench_pinn.CASES), help="PINN case names")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 5 if args.quick else 11
    cases = args.cases.split(",")
    rows: list[dict[str, object]] = []
    if "mlp" in cases:
        rows += [mlp_case(k, 1, 5 * repeats) for k in (4, 8, 16)]
    if "batch" in cases:
        rows.append(mlp_case(8, 4096, repeats))
    if "laplacian" in cases:
        rows.append(laplacian_case(256, repeats))
    if "pinn" in cases:
        rows += [pinn_case(name, repeats) for name in args.pinn.split(",")]
    print(f"torch {torch.__version__}, {args.threads} thread(s); medians of interleaved rounds")
    lines = [_line(row) for row in rows]
    print(
        table(
            [
                "case",
                "eager ms",
                "compiled ms",
                "eager/compiled",
                "compiled/JAX",
                "floor/compiled",
                "create_graph/compiled",
                "compile s",
                "rel diff",
                "vs float64: eager, compiled",
            ],
            lines,
        )
    )
    jet = "not importable (it needs Python >= 3.12): not run"
    print(f"compilations: {_compiled.COMPILES[0]}; jet-for-pytorch: {jet}")
    print(f"results: {write_json('bench_compile', rows)}")


if __name__ == "__main__":
    main()
