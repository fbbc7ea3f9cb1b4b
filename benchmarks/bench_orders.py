"""Orders 1..8 of a small tanh MLP: nested torch.func (hodfunc) against the imperative path.

The MLP is REFERENCES.md's scalar ``x -> w3 . tanh(W2 tanh(W1 x + b1) + b2)``, width 64, float32.
At one point the imperative path is ``hodfunc.imperative.derivative`` (create_graph chains); at 4096
points under vmap it is the usual imperative batch trick, ``autograd.grad(y.sum(), x,
create_graph=True)`` chained ``k`` times, valid because the points are independent. Every figure is
a ratio against the imperative time measured in the same run; results are checked against each
other before timing.

    python benchmarks/bench_orders.py [--quick]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from _common import median_seconds, table, write_json
from torch import Tensor

import hodfunc
from hodfunc import imperative

WIDTH = 64
Fn = Callable[[Tensor], Tensor]


def mlp(width: int = WIDTH, dtype: torch.dtype = torch.float32) -> Fn:
    """The scalar MLP with fixed-seed weights."""
    g = torch.Generator().manual_seed(0)
    w1 = torch.randn(width, generator=g, dtype=dtype)
    b1 = torch.randn(width, generator=g, dtype=dtype)
    w2 = torch.randn(width, width, generator=g, dtype=dtype) / width**0.5
    b2 = torch.randn(width, generator=g, dtype=dtype)
    w3 = torch.randn(width, generator=g, dtype=dtype) / width**0.5

    def f(x: Tensor) -> Tensor:
        out: Tensor = w3 @ torch.tanh(w2 @ torch.tanh(w1 * x + b1) + b2)
        return out

    return f


def imperative_batch(f_batch: Fn, x: Tensor, order: int) -> Tensor:
    """The imperative batch trick: chain ``autograd.grad(y.sum(), x, create_graph=True)``."""
    leaf = x.detach().clone().requires_grad_(True)
    y = f_batch(leaf)
    for _ in range(order):
        (y,) = torch.autograd.grad(y.sum(), leaf, create_graph=True)
    return y.detach()


def measure(f: Fn, x0: Tensor, xs: Tensor, k: int, repeats: int) -> dict[str, float]:
    """Check nested against imperative at order ``k``, then time both at one point and at ``xs``."""
    f_batch = torch.func.vmap(f)
    nested = hodfunc.derivative(f, k, method="nested")
    imp = imperative.derivative(f, k)
    batched = torch.func.vmap(nested)
    ref1, ref_b = imp(x0), imperative_batch(f_batch, xs, k)
    err1 = float((nested(x0) - ref1).abs().max() / ref1.abs().max().clamp(min=1e-6))
    err_b = float((batched(xs) - ref_b).abs().max() / ref_b.abs().max().clamp(min=1e-6))
    assert err1 < 1e-3, (k, err1)
    assert err_b < 1e-3, (k, err_b)
    slow = repeats if k < 7 else 2
    return {
        "order": k,
        "point_nested_s": median_seconds(lambda: nested(x0), repeats),
        "point_imperative_s": median_seconds(lambda: imp(x0), repeats),
        "vmap4096_nested_s": median_seconds(lambda: batched(xs), slow),
        "vmap4096_imperative_s": median_seconds(lambda: imperative_batch(f_batch, xs, k), slow),
        "rel_err_point": err1,
        "rel_err_4096": err_b,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="nested torch.func vs imperative, orders 1..8")
    parser.add_argument("--quick", action="store_true", help="orders 1..4 and fewer repeats")
    args = parser.parse_args()
    orders = range(1, 5 if args.quick else 9)
    repeats = 3 if args.quick else 5
    f = mlp()
    x0, xs = torch.tensor(0.3), torch.linspace(-2, 2, 4096)
    rows = [measure(f, x0, xs, k, repeats) for k in orders]
    print(
        f"tanh MLP width {WIDTH}, float32, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; ratio = nested / imperative (same run)"
    )
    headers = ["order", "1pt nested ms", "1pt imper. ms", "ratio"]
    headers += ["4096 nested ms", "4096 imper. ms", "ratio"]
    printed = [
        [
            str(int(r["order"])),
            f"{r['point_nested_s'] * 1e3:.2f}",
            f"{r['point_imperative_s'] * 1e3:.2f}",
            f"{r['point_nested_s'] / r['point_imperative_s']:.2f}",
            f"{r['vmap4096_nested_s'] * 1e3:.1f}",
            f"{r['vmap4096_imperative_s'] * 1e3:.1f}",
            f"{r['vmap4096_nested_s'] / r['vmap4096_imperative_s']:.2f}",
        ]
        for r in rows
    ]
    print(table(headers, printed))
    print(f"wrote {write_json('orders', [dict(r) for r in rows])}")


if __name__ == "__main__":
    main()
