"""The cases of the distributed tests, and what every rank runs (``work``).

Each case is defined once here and used twice: by the ranks (through ``hodfunc.distributed``)
and by the test process (the one-process oracle: ``hodfunc.batched``, ``hodfunc.clipped_grad_sum``
on the whole batch, the training loop on all the points).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from helpers import mlp, seeded
from torch import Tensor, nn
from torch.func import vmap
from torch.nn.parallel import DistributedDataParallel

import hodfunc
import hodfunc.distributed as hd

F64 = torch.float64

# ------------------------------------------------------------------ batched evaluation

MLP_POINTS, MLP_CHUNK = 1001, 100  # 11 chunks, the last of one point: no even split


def mlp_derivatives() -> Callable[[Tensor], Tensor]:
    """Derivatives 0..8 of a scalar tanh MLP (Taylor mode, whole-batch path under vmap)."""
    g = seeded(10)
    w1, b1 = torch.randn(16, dtype=F64, generator=g), torch.randn(16, dtype=F64, generator=g)
    w2 = torch.randn(16, 16, dtype=F64, generator=g) / 4
    w3 = torch.randn(16, dtype=F64, generator=g) / 4

    def f(x: Tensor) -> Tensor:
        return w3 @ torch.tanh(w2 @ torch.tanh(w1 * x + b1))

    return hodfunc.derivatives(f, order=8)


def mlp_points() -> Tensor:
    return torch.linspace(-2, 2, MLP_POINTS, dtype=F64)


def hessian_fn() -> Callable[..., Tensor]:
    """Per-point Hessians (3, 3) of a function of a batched point and a shared weight."""

    def g(x: Tensor, w: Tensor, *, scale: float = 1.0) -> Tensor:
        return scale * (torch.tanh(x @ w) ** 2).sum()

    return hodfunc.hessian(g)


def hessian_args() -> tuple[Tensor, Tensor]:
    return torch.randn(7, 3, dtype=F64, generator=seeded(11)), torch.randn(
        3, 2, dtype=F64, generator=seeded(12)
    )


def sin4() -> Callable[[Tensor], Tensor]:
    return hodfunc.derivative(torch.sin, order=4)


def batched_cases(world: int) -> dict[str, object]:
    """Every evaluation result this rank gets, keyed by case."""
    out: dict[str, object] = {}
    d8, xs = mlp_derivatives(), mlp_points()
    out["mlp_all"] = hd.batched(d8, chunk_size=MLP_CHUNK)(xs)
    out["mlp_one"] = hd.batched(d8, chunk_size=MLP_CHUNK, result="one", dst=world - 1)(xs)
    out["mlp_shard"] = hd.batched(d8, chunk_size=MLP_CHUNK, result="shard")(xs)
    out["mlp_none_all"] = hd.batched(d8)(xs)
    x, w = hessian_args()
    hess = hd.batched(hessian_fn(), in_dims=(0, None), chunk_size=2)
    out["hessian_all"] = hess(x, w, scale=0.5)
    out["hessian_columns"] = hd.batched(hessian_fn(), in_dims=(1, None), chunk_size=2)(
        x.T.contiguous(), w
    )
    tiny = torch.linspace(0, 1, 5, dtype=F64)  # 2 chunks of 4: with 3 ranks, rank 2 gets none
    out["tiny_all"] = hd.batched(sin4(), chunk_size=4)(tiny)
    out["tiny_one"] = hd.batched(sin4(), chunk_size=4, result="one", dst=world - 1)(tiny)
    out["tiny_shard"] = hd.batched(sin4(), chunk_size=4, result="shard")(tiny)
    out["range"] = hd.shard_range(MLP_POINTS, chunk_size=MLP_CHUNK)
    return out


def error_cases(rank: int, world: int) -> dict[str, object]:
    """What each rank raises when the ranks disagree or one fails: names, never a hang."""
    out: dict[str, object] = {}
    d1 = hd.batched(hodfunc.derivative(torch.sin, order=1), chunk_size=2)
    try:  # rank r passes 6 + r points
        d1(torch.zeros(6 + rank, dtype=F64))
    except hodfunc.HodfuncError as e:
        out["totals"] = (type(e).__name__, str(e))
    points = torch.zeros(6, dtype=F64) if rank != 1 else torch.zeros(6, dtype=torch.int64)
    try:  # rank 1 alone fails on its share (integer points)
        d1(points)
    except hodfunc.HodfuncError as e:
        out["one_fails"] = (type(e).__name__, str(e), getattr(e, "rank", None))
    ddp = DistributedDataParallel(mlp(1, 4, 1, "tanh"))
    try:
        hd.batched(hodfunc.derivative(lambda x: ddp(x.reshape(1)).sum(), order=2))
    except hodfunc.ArgumentTypeError as e:
        out["ddp_in_transform"] = str(e)
    try:
        hd.all_reduce_grads(ddp)
    except hodfunc.ArgumentTypeError as e:
        out["ddp_all_reduce"] = str(e)
    try:  # a plain transform: Taylor mode's reach walk meets the DDP module
        hodfunc.laplacian(lambda p: ddp(p.reshape(1)).sum())(torch.tensor(0.5, dtype=F64))
    except hodfunc.ArgumentTypeError as e:
        out["ddp_in_plain_transform"] = str(e)
    return out


# ------------------------------------------------------------------ DP-SGD


class Scale(nn.Module):
    """A parameter without a per-sample layer rule (hodfunc falls back to vmap(grad) for it)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, 2, dtype=F64))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight


def dp_model() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        return nn.Sequential(
            nn.Linear(3, 8, dtype=F64), nn.Tanh(), nn.Linear(8, 2, dtype=F64), Scale()
        )


def dp_batch(size: int) -> tuple[Tensor, Tensor]:
    g = seeded(13)
    return 3 * torch.randn(size, 3, dtype=F64, generator=g), torch.randn(
        size, 2, dtype=F64, generator=g
    )


DP_SIZE, DP_CLIP, DP_SIGMA, DP_SEED = 11, 1.0, 1.3, 7


def dp_loss(out: Tensor, y: Tensor) -> Tensor:
    return nn.functional.mse_loss(out, y)


def dp_cases() -> dict[str, object]:
    model, out = dp_model(), dict[str, object]()
    x, y = dp_batch(DP_SIZE)
    mine = hd.shard_range(DP_SIZE)
    out["dp_plain"] = hd.clipped_grad_sum(
        model, dp_loss, x[mine.start : mine.stop], y[mine.start : mine.stop], max_norm=DP_CLIP
    )
    out["dp_noisy"] = hd.clipped_grad_sum(
        model,
        dp_loss,
        x[mine.start : mine.stop],
        y[mine.start : mine.stop],
        max_norm=DP_CLIP,
        noise_multiplier=DP_SIGMA,
        generator=torch.Generator().manual_seed(DP_SEED),
    )
    two = hd.shard_range(2)  # with 3 ranks, rank 2's share is empty
    out["dp_two"] = hd.clipped_grad_sum(
        model, dp_loss, x[two.start : two.stop], y[two.start : two.stop], max_norm=DP_CLIP
    )
    return out


def dp_noise(like: dict[str, Tensor]) -> dict[str, Tensor]:
    """The documented draws: one ``randn`` per parameter, in order, from the seeded generator."""
    g = torch.Generator().manual_seed(DP_SEED)
    return {
        k: DP_SIGMA * DP_CLIP * torch.randn(v.shape, generator=g, dtype=v.dtype)
        for k, v in like.items()
    }


# ------------------------------------------------------------------ PINN training

PINN_POINTS, PINN_BOUNDARY, PINN_STEPS = 97, 13, 4


def pinn_net() -> nn.Module:
    return mlp(2, 12, 1, "tanh", seed=4)


def pinn_points() -> tuple[Tensor, Tensor]:
    g = seeded(14)
    inside = torch.rand(PINN_POINTS, 2, dtype=F64, generator=g)
    edge = torch.rand(PINN_BOUNDARY, 2, dtype=F64, generator=g).round(decimals=0)
    return inside, edge


def residual(net: nn.Module, x: Tensor) -> Tensor:
    """``Delta u + 0.5 du/dx0 + sin(pi x0) sin(pi x1)`` at each point, with hodfunc transforms."""

    def u(p: Tensor) -> Tensor:
        out: Tensor = net(p)
        return out.squeeze(-1)

    lap = vmap(hodfunc.laplacian(u))(x)
    ux = vmap(hodfunc.partial(u, wrt=(0,)))(x)
    return lap + 0.5 * ux + torch.sin(math.pi * x[:, 0]) * torch.sin(math.pi * x[:, 1])


def pinn_loss(net: nn.Module, x: Tensor, edge: Tensor, n: int, n_edge: int) -> Tensor:
    """This share's part of the whole loss: sums over its points, divided by the global counts."""
    boundary: Tensor = net(edge)
    return residual(net, x).square().sum() / n + boundary.square().sum() / n_edge


class Residual(nn.Module):
    """The module DDP wraps: its forward computes the residual with hodfunc on the plain net."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, edge: Tensor) -> Tensor:
        return pinn_loss(self.net, x, edge, PINN_POINTS, PINN_BOUNDARY)


def train_alone() -> dict[str, Tensor]:
    """The oracle: one process on all the points, PINN_STEPS Adam steps."""
    net, (x, edge) = pinn_net(), pinn_points()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(PINN_STEPS):
        opt.zero_grad()
        torch.autograd.backward(pinn_loss(net, x, edge, PINN_POINTS, PINN_BOUNDARY))
        opt.step()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def pinn_cases(world: int) -> dict[str, object]:
    out: dict[str, object] = {}
    x, edge = pinn_points()
    mine, my_edge = hd.shard_range(PINN_POINTS), hd.shard_range(PINN_BOUNDARY)
    xs, es = x[mine.start : mine.stop], edge[my_edge.start : my_edge.stop]
    # design 1: the plain network, an explicit all-reduce of the gradients
    net = pinn_net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(PINN_STEPS):
        opt.zero_grad()
        torch.autograd.backward(pinn_loss(net, xs, es, PINN_POINTS, PINN_BOUNDARY))
        hd.all_reduce_grads(net)
        opt.step()
    out["pinn_all_reduce"] = {k: v.detach().clone() for k, v in net.state_dict().items()}
    # design 2: DDP around the module whose forward calls the transforms. DDP averages over the
    # ranks, so each share's loss is scaled by the world size to give the sum of the shares.
    net = pinn_net()
    ddp = DistributedDataParallel(Residual(net))
    opt = torch.optim.Adam(ddp.parameters(), lr=1e-2)
    for _ in range(PINN_STEPS):
        opt.zero_grad()
        torch.autograd.backward(world * ddp(xs, es))
        opt.step()
    out["pinn_ddp"] = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return out


def work(rank: int, world: int) -> dict[str, object]:
    """Everything one rank runs, in one process group (one spawn per world size)."""
    return {
        **batched_cases(world),
        **dp_cases(),
        **pinn_cases(world),
        **error_cases(rank, world),
    }
