"""Taylor mode on the scalar tanh MLP of REFERENCES.md (width 64): one point at orders 2..64,
4096 points under vmap, and float32 accuracy against float64.

Baselines measured in the same run: nested ``torch.func.grad`` (K nested grads, the usual way), and
jet-for-pytorch (``import jet`` here, or run by ``bench_taylor_jet_worker.py`` under
``$JET_PYTHON``; skipped with the reason when neither works) and JAX jet (when ``import jax``
works; skipped otherwise). Every method is checked against a reference before it is timed.

    python benchmarks/bench_taylor.py [--quick] [--threads N] [--tuned-allocator]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
from collections.abc import Callable
from types import ModuleType

import torch
from _common import (
    interleaved_medians,
    jet_mlp,
    jet_module,
    median_seconds,
    mlp_weights,
    run_jet,
    table,
    write_json,
)
from torch import Tensor

import hodfunc

WIDTH = 64
IN_PROCESS = "jet-for-pytorch in this interpreter: timed in the same rounds"
NESTED_MAX_ORDER = 10
"""Nested grad costs 2-3x more per order; above this it takes minutes at one point."""


def scalar_mlp(dtype: torch.dtype) -> Callable[[Tensor], Tensor]:
    w1, b1, w2, b2, w3 = mlp_weights(WIDTH, dtype)

    def f(x: Tensor) -> Tensor:
        return w3 @ torch.tanh(w2 @ torch.tanh(w1 @ x.reshape(1) + b1) + b2)

    return f


def nested_grad(f: Callable[[Tensor], Tensor], order: int) -> Callable[[Tensor], Tensor]:
    """All derivatives ``0..order`` by nesting ``torch.func.grad``."""
    fns = [f]
    for _ in range(order):
        fns.append(torch.func.grad(fns[-1]))
    return lambda x: torch.stack([g(x) for g in fns])


def jax_available() -> str:
    return "" if importlib.util.find_spec("jax") is not None else "jax not installed"


def rel_error(got: Tensor, ref: Tensor) -> float:
    """``max |got - ref| / max |ref|`` per order (the scale of that order), worst order."""
    scale = ref.abs().amax(dim=0).clamp(min=1e-30)
    return float(((got.double() - ref.double()).abs() / scale).max())


def jet_tasks(orders: list[int], xs: Tensor, repeats: int) -> list[dict[str, object]]:
    """The worker's task list for the same orders and points (``$JET_PYTHON`` path)."""
    where: dict[str, object] = (
        {"x": float(xs.reshape(-1)[0])} if xs.numel() == 1 else {"points": xs.numel()}
    )
    return [
        {
            "kind": "mlp",
            "order": k,
            "dtype": str(d).split(".")[-1],
            "width": WIDTH,
            "repeats": repeats,
            "points": xs.numel(),
            **where,
        }
        for k in orders
        for d in (torch.float32, torch.float64)
    ]


def compare_jet(
    jet: ModuleType | None,
    results: list[dict[str, object]],
    index: int,
    order: int,
    xs32: Tensor,
    ref64: Tensor,
    row: dict[str, object],
) -> Callable[[], Tensor] | None:
    """Fill ``row`` with jet-for-pytorch's errors (and its time, from the worker); return its call
    when it runs in this interpreter, to be timed in the same rounds as hodfunc."""
    try:
        if jet is not None:
            run = jet_mlp(jet.jet, order, xs32, WIDTH)
            v32 = run().double()
            v64 = jet_mlp(jet.jet, order, xs32.double(), WIDTH)().double()
        elif results:
            res32, res64 = results[2 * index], results[2 * index + 1]
            if "error" in res32:
                raise RuntimeError(str(res32["error"]))
            v32 = torch.tensor(res32["values"], dtype=torch.float64)
            v64 = torch.tensor(res64["values"], dtype=torch.float64)
            row["jet_s"] = res32["seconds"]
            run = None
        else:
            return None
    except Exception as error:  # jet-for-pytorch fails from order ~24 on: report it
        row["jet_error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
        return None
    row["jet_vs_taylor64"] = rel_error(v64, ref64)
    row["jet_float32_error"] = rel_error(v32, v64)
    return run


def one_point(orders: list[int], repeats: int, threads: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    f32, f64 = scalar_mlp(torch.float32), scalar_mlp(torch.float64)
    x32, x64 = torch.tensor(0.3), torch.tensor(0.3, dtype=torch.float64)
    jet = jet_module()
    results, note = ([], IN_PROCESS) if jet else run_jet(jet_tasks(orders, x32, repeats), threads)
    print(f"one point: {note}")
    for i, k in enumerate(orders):
        taylor = hodfunc.derivatives(f32, k, method="taylor")
        taylor64 = hodfunc.derivatives(f64, k, method="taylor")(x64)
        row: dict[str, object] = {"order": k}
        row["taylor_float64_finite"] = bool(torch.isfinite(taylor64).all())
        methods: dict[str, Callable[[], object]] = {"taylor": lambda: taylor(x32)}  # noqa: B023
        run = compare_jet(jet, results, i, k, x32.reshape(1), taylor64.reshape(1, -1), row)
        if run is not None:
            methods["jet"] = run
        row.update({f"{m}_s": t for m, t in interleaved_medians(methods, repeats).items()})
        if k <= NESTED_MAX_ORDER:
            nested = nested_grad(f32, k)
            ref64 = nested_grad(f64, k)(x64)
            error = rel_error(taylor64, ref64)
            assert error < 1e-8, (k, error)
            row["taylor_vs_nested_float64"] = error
            row["nested_s"] = median_seconds(lambda: nested(x32), max(1, repeats // 3))  # noqa: B023
        rows.append(row)
    return rows


def many_points(
    orders: list[int], points: int, repeats: int, threads: int
) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    f32, f64 = scalar_mlp(torch.float32), scalar_mlp(torch.float64)
    xs32 = torch.linspace(-1.5, 1.5, points)
    xs64 = xs32.double()
    jet = jet_module()
    results, note = ([], IN_PROCESS) if jet else run_jet(jet_tasks(orders, xs32, repeats), threads)
    print(f"{points} points: {note}")
    for i, k in enumerate(orders):
        taylor = torch.func.vmap(hodfunc.derivatives(f32, k, method="taylor"))
        ref = torch.func.vmap(hodfunc.derivatives(f64, k, method="taylor"))(xs64)
        row: dict[str, object] = {"order": k, "points": points}
        row["taylor_float32_error"] = rel_error(taylor(xs32), ref)
        methods: dict[str, Callable[[], object]] = {"taylor": lambda: taylor(xs32)}  # noqa: B023
        run = compare_jet(jet, results, i, k, xs32, ref, row)
        if run is not None:
            methods["jet"] = run
        row.update({f"{m}_s": t for m, t in interleaved_medians(methods, repeats).items()})
        if k == 8:
            nested = torch.func.vmap(nested_grad(f32, k))
            check = torch.func.vmap(nested_grad(f64, k))(xs64[:64])
            assert rel_error(ref[:64].T, check.T) < 1e-8
            row["nested_float32_error"] = rel_error(nested(xs32), ref)
            row["nested_s"] = median_seconds(lambda: nested(xs32), 1)  # noqa: B023
        rows.append(row)
    return rows


def fmt_err(row: dict[str, object], key: str) -> str:
    value = row.get(key)
    return f"{value:.1e}" if isinstance(value, float) else "-"


def fmt_ms(row: dict[str, object], key: str) -> str:
    value = row.get(key)
    return f"{1e3 * float(value):.3g}" if isinstance(value, float) else "-"


def ratio(row: dict[str, object], slow: str, fast: str) -> str:
    a, b = row.get(slow), row.get(fast)
    return f"{float(a) / float(b):.1f}x" if isinstance(a, float) and isinstance(b, float) else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer orders and repeats")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--tuned-allocator",
        action="store_true",
        help="call hodfunc.tune_cpu_allocator() first (for every method alike: one process)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.tuned_allocator:
        print(f"allocator: {hodfunc.tune_cpu_allocator()}")
    repeats = 5 if args.quick else 15
    orders = [2, 4, 8, 16] if args.quick else [2, 4, 8, 12, 16, 24, 32, 48, 64]
    print(f"jax: {jax_available() or 'installed, but no comparison is written yet'}")
    rows = one_point(orders, repeats, args.threads)
    print(
        table(
            [
                "order",
                "taylor ms",
                "nested grad ms",
                "jet ms",
                "nested/taylor",
                "jet/taylor",
                "note",
            ],
            [
                [
                    str(r["order"]),
                    fmt_ms(r, "taylor_s"),
                    fmt_ms(r, "nested_s"),
                    fmt_ms(r, "jet_s"),
                    ratio(r, "nested_s", "taylor_s"),
                    ratio(r, "jet_s", "taylor_s"),
                    str(r.get("jet_error", ""))[:60],
                ]
                for r in rows
            ],
        )
    )
    many = many_points([8] if args.quick else [4, 8, 16], 4096, max(3, repeats // 3), args.threads)
    print(
        table(
            [
                "order",
                "taylor ms",
                "nested ms",
                "jet ms",
                "nested/taylor",
                "jet/taylor",
                "taylor f32 err",
                "jet f32 err",
                "nested f32 err",
            ],
            [
                [
                    str(r["order"]),
                    fmt_ms(r, "taylor_s"),
                    fmt_ms(r, "nested_s"),
                    fmt_ms(r, "jet_s"),
                    ratio(r, "nested_s", "taylor_s"),
                    ratio(r, "jet_s", "taylor_s"),
                    fmt_err(r, "taylor_float32_error"),
                    fmt_err(r, "jet_float32_error"),
                    fmt_err(r, "nested_float32_error"),
                ]
                for r in many
            ],
        )
    )
    allocator = "tuned" if args.tuned_allocator else "default"
    path = write_json("bench_taylor", [{**r, "allocator": allocator} for r in [*rows, *many]])
    print(f"wrote {path}")
    assert all(isinstance(r["taylor_s"], float) and math.isfinite(r["taylor_s"]) for r in rows)


if __name__ == "__main__":
    main()
