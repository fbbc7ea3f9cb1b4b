"""hodfunc.distributed on 2 gloo processes (1 thread each) against 1 process (1 thread).

One question: how much faster do two processes on this 2-core machine kind get through
(1) batched evaluation of derivatives 0..8 of the scalar tanh MLP of REFERENCES.md (width 64)
at 10^6 points, in chunks of 8192 (``--chunk-size``), and (2) a PINN training step at
N = 8192 collocation points (residual ``Laplacian u + u_x0 + f`` with ``hodfunc.laplacian`` and
``hodfunc.partial`` under vmap, tanh MLP 2-64-64-64-64-1, Adam), and how much of the 2-process
time is communication? 8192 points per chunk is the fastest chunk for one process here (1.3-1.6x
faster than 65536, whose coefficient buffers overflow the caches; two processes at 65536
also compete for memory bandwidth and scale worse: see benchmarks/README.md).

Every process is a fresh ``spawn`` with one thread (and its own gloo group, file store); each
warms its traces and runs the evaluation (the first training step) once untimed, so the timings
are the steady state. A run whose busiest rank got less than 90% of a core (CPU time / wall
time: another process took it) is repeated, up to ``--tries`` times. The 1-process and
2-process runs alternate for ``--rounds`` rounds; the figures are medians over the rounds,
each run timed after a barrier and taken at the slowest rank. Before anything is reported, the
2-process evaluation is checked bitwise against the 1-process one and the 2-process weights
against the 1-process weights.

Figures: throughput ratio (speedup) and scaling efficiency (speedup / 2); for evaluation the
time of the all-gather alone (the same tensors, the same collective) as a share of the
evaluation, and ``result="shard"`` (no gather); for training the gradient all-reduce's share of
the step (the time inside ``all_reduce_grads``, which includes waiting for the slower rank,
and the all-reduce alone after a barrier). Run it alone on the machine (here under
``flock /tmp/hodfunc-cpu.lock``):

    .venv/bin/python benchmarks/bench_distributed.py [--quick] [--rounds 3] [--tries 3]
        [--dtype float32] [--chunk-size 8192]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import multiprocessing
import os
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from _common import mlp_weights, table, write_json
from torch import Tensor, nn
from torch.func import vmap

import hodfunc
import hodfunc.distributed as hd
from hodfunc._distributed._batched import shard_bounds
from hodfunc._distributed._group import gather_rows, resolve

Config = dict[str, int | float | str]
Out = dict[str, float]
WIDTH = 64


def _dtype(config: Config) -> torch.dtype:
    dtype = getattr(torch, str(config["dtype"]))
    assert isinstance(dtype, torch.dtype)
    return dtype


def _barrier() -> float:
    dist.barrier()
    return time.perf_counter()


# ------------------------------------------------------------------ batched evaluation


def eval_case(config: Config) -> tuple[Callable[[Tensor], Tensor], Tensor]:
    """Derivatives 0..order of the width-64 scalar tanh MLP, and the points."""
    dtype = _dtype(config)
    w1, b1, w2, b2, w3 = mlp_weights(WIDTH, dtype)

    def f(x: Tensor) -> Tensor:
        return w3 @ torch.tanh(w2 @ torch.tanh(w1 @ x.reshape(1) + b1) + b2)

    points = torch.linspace(-1.5, 1.5, int(config["points"]), dtype=dtype)
    return hodfunc.derivatives(f, order=int(config["order"])), points


def eval_job(rank: int, world: int, config: Config, folder: Path) -> Out:
    fn, xs = eval_case(config)
    chunk = int(config["chunk"])
    # trace every chunk size this rank will meet (a full chunk and the last, partial one)
    hodfunc.batched(fn, chunk_size=chunk)(xs[: chunk + xs.shape[0] % chunk])
    if world == 1:
        run = hodfunc.batched(fn, chunk_size=chunk)
        run(xs)  # the first full run faults in the memory of its results
        start, cpu = time.perf_counter(), time.process_time()
        values = run(xs)
        wall = time.perf_counter() - start
        out = {"total_s": wall, "cpu_share": (time.process_time() - cpu) / wall}
        if config["save"]:
            torch.save(values, folder / "eval-solo.pt")
        return out
    every = hd.batched(fn, chunk_size=chunk)
    shard = hd.batched(fn, chunk_size=chunk, result="shard")
    every(xs)  # the first full run faults in the memory of its results
    start = _barrier()
    part = shard(xs)
    shard_s = time.perf_counter() - start
    start, cpu = _barrier(), time.process_time()
    values = every(xs)
    all_s = time.perf_counter() - start
    cpu_share = (time.process_time() - cpu) / all_s
    counts = [b - a for a, b in shard_bounds(xs.shape[0], chunk, world)]
    start = _barrier()
    gathered = gather_rows(resolve("bench", None), part.values, counts, dst=None)
    gather_s = time.perf_counter() - start
    assert gathered is not None
    assert torch.equal(gathered, values)
    if config["save"] and rank == 0:
        torch.save(values, folder / "eval-pair.pt")
    return {
        "total_s": all_s,
        "shard_s": shard_s,
        "gather_s": gather_s,
        "points": counts[rank],
        "cpu_share": cpu_share,
    }


# ------------------------------------------------------------------ PINN training step


def pinn_net(dtype: torch.dtype) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        sizes = [2, WIDTH, WIDTH, WIDTH, WIDTH, 1]
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[i], sizes[i + 1], dtype=dtype))
            if i < len(sizes) - 2:
                layers.append(nn.Tanh())
        return nn.Sequential(*layers)


def pinn_loss(net: nn.Module, x: Tensor, total: int) -> Tensor:
    """This share's part of the mean square residual over all ``total`` points."""

    def u(p: Tensor) -> Tensor:
        out: Tensor = net(p)
        return out.squeeze(-1)

    res = vmap(hodfunc.laplacian(u))(x) + vmap(hodfunc.partial(u, wrt=(0,)))(x)
    res = res + torch.sin(math.pi * x[:, 0]) * torch.sin(math.pi * x[:, 1])
    return res.square().sum() / total


def pinn_job(rank: int, world: int, config: Config, folder: Path) -> Out:
    dtype, total = _dtype(config), int(config["pinn_points"])
    x = torch.rand(total, 2, dtype=dtype, generator=torch.Generator().manual_seed(6))
    mine = hd.shard_range(total)
    local = x[mine.start : mine.stop]
    net = pinn_net(dtype)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    steps, comms, cpus = [], [], []
    for i in range(int(config["steps"]) + 1):  # the first step warms the traces
        start, cpu = _barrier(), time.process_time()
        opt.zero_grad()
        torch.autograd.backward(pinn_loss(net, local, total))
        reduce_start = time.perf_counter()
        if world > 1:
            hd.all_reduce_grads(net)
        comm = time.perf_counter() - reduce_start
        opt.step()
        if i > 0:
            steps.append(time.perf_counter() - start)
            comms.append(comm)
            cpus.append(time.process_time() - cpu)
    if config["save"] and rank == 0:
        torch.save(net.state_dict(), folder / f"pinn-{world}.pt")
    alone = []  # the all-reduce without waiting for a slower rank
    for _ in range(5 if world > 1 else 0):
        start = _barrier()
        hd.all_reduce_grads(net)
        alone.append(time.perf_counter() - start)
    return {
        "step_s": statistics.median(steps),
        "comm_s": statistics.median(comms),
        "reduce_s": statistics.median(alone) if alone else 0.0,
        "cpu_share": sum(cpus) / sum(steps),
    }


# ------------------------------------------------------------------ processes

JOBS: dict[str, Callable[[int, int, Config, Path], Out]] = {"eval": eval_job, "pinn": pinn_job}


def _rank(job: str, rank: int, world: int, folder: str, store: str, config: Config) -> None:
    torch.set_num_threads(1)
    out = Path(folder)
    try:
        dist.init_process_group(
            "gloo",
            init_method=(out / store).resolve().as_uri(),
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=600),
        )
        try:
            result = JOBS[job](rank, world, config, out)
            dist.barrier()  # no rank tears down while another is still in a collective
        finally:
            dist.destroy_process_group()
        (out / f"{job}-{world}-{rank}.json").write_text(json.dumps(result))
    except BaseException:
        (out / f"{job}-{world}-{rank}.err").write_text(traceback.format_exc())
        raise SystemExit(1) from None
    # done: leave without interpreter finalisation, where a rank was seen to abort ("terminate
    # called without an active exception") after its group was destroyed
    os._exit(0)


def launch(job: str, world: int, config: Config, folder: Path) -> list[Out]:
    """``job`` on ``world`` fresh one-thread processes; every rank's figures."""
    store = f"store-{job}-{world}-{time.time_ns()}"  # a fresh rendezvous file every launch
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_rank, args=(job, r, world, str(folder), store, config))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(900)
    errors = [
        (folder / f"{job}-{world}-{r}.err").read_text()
        for r in range(world)
        if (folder / f"{job}-{world}-{r}.err").exists()
    ]
    if errors or any(p.exitcode != 0 for p in procs):
        for p in procs:
            if p.is_alive():
                p.kill()
        codes = [p.exitcode for p in procs]
        done = [(folder / f"{job}-{world}-{r}.json").exists() for r in range(world)]
        raise RuntimeError(
            f"{job} on {world} processes failed (exit codes {codes}, results written {done}):\n"
            + "\n".join(errors)
        )
    results: list[Out] = []
    for r in range(world):
        path = folder / f"{job}-{world}-{r}.json"
        results.append(json.loads(path.read_text()))
        path.unlink()
    return results


def slowest(results: list[Out], key: str) -> float:
    return max(r[key] for r in results)


QUIET = 0.9
"""A run counts when its busiest rank got at least this share of a core (CPU time / wall time):
below it another process took the core, and the run is repeated."""


def measure(job: str, world: int, config: Config, folder: Path, tries: int) -> list[Out]:
    """``launch``, repeated (at most ``tries`` times) while another process takes a core."""
    for _ in range(tries - 1):
        results = launch(job, world, config, folder)
        if slowest(results, "cpu_share") >= QUIET:
            return results
        shares = ", ".join(f"{r['cpu_share']:.2f}" for r in results)
        print(f"  {job} on {world}: core shares {shares}, busy elsewhere: again", flush=True)
    return launch(job, world, config, folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10^5 points, N = 2048, 1 round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--tries", type=int, default=3, help="runs per measurement at most")
    parser.add_argument("--chunk-size", type=int, default=8192, help="points per chunk")
    args = parser.parse_args()
    config: Config = {
        "points": 100_000 if args.quick else 1_000_000,
        "order": 8,
        "chunk": args.chunk_size,
        "pinn_points": 2048 if args.quick else 8192,
        "steps": 3 if args.quick else 5,
        "dtype": args.dtype,
        "save": 0,
    }
    rounds = 1 if args.quick else args.rounds
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)  # as every rank (and so recorded in the environment)
    solo: dict[str, list[float]] = {"eval": [], "pinn": []}
    quiet: dict[str, list[float]] = {"eval": [], "pinn": []}
    names = ("eval", "shard", "gather", "pinn", "comm", "reduce")
    pair: dict[str, list[float]] = {k: [] for k in names}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for i in range(rounds):
            config["save"] = int(i == 0)
            one = measure("eval", 1, config, folder, args.tries)
            two = measure("eval", 2, config, folder, args.tries)
            if i == 0:  # correctness before any figure
                a, b = torch.load(folder / "eval-solo.pt"), torch.load(folder / "eval-pair.pt")
                assert torch.equal(a, b), "2-process evaluation differs from 1 process"
                points = [int(r["points"]) for r in two]
            quiet["eval"].append(min(slowest(one, "cpu_share"), slowest(two, "cpu_share")))
            solo["eval"].append(slowest(one, "total_s"))
            pair["eval"].append(slowest(two, "total_s"))
            pair["shard"].append(slowest(two, "shard_s"))
            pair["gather"].append(slowest(two, "gather_s"))
            one = measure("pinn", 1, config, folder, args.tries)
            two = measure("pinn", 2, config, folder, args.tries)
            if i == 0:
                w1, w2 = torch.load(folder / "pinn-1.pt"), torch.load(folder / "pinn-2.pt")
                weight_diff = max(float((w1[k] - w2[k]).abs().max()) for k in w1)
                scale = max(float(w1[k].abs().max()) for k in w1)
                assert weight_diff <= 1e-4 * scale, weight_diff
            quiet["pinn"].append(min(slowest(one, "cpu_share"), slowest(two, "cpu_share")))
            solo["pinn"].append(slowest(one, "step_s"))
            pair["pinn"].append(slowest(two, "step_s"))
            pair["comm"].append(slowest(two, "comm_s"))
            pair["reduce"].append(slowest(two, "reduce_s"))
            print(
                f"round {i + 1}/{rounds}: eval {solo['eval'][-1]:.2f} s / {pair['eval'][-1]:.2f} s,"
                f" pinn step {1e3 * solo['pinn'][-1]:.0f} ms / {1e3 * pair['pinn'][-1]:.0f} ms",
                flush=True,
            )
    med = {f"solo_{k}_s": statistics.median(v) for k, v in solo.items()}
    med |= {f"pair_{k}_s": statistics.median(v) for k, v in pair.items()}
    eval_speedup = med["solo_eval_s"] / med["pair_eval_s"]
    pinn_speedup = med["solo_pinn_s"] / med["pair_pinn_s"]
    rows: list[dict[str, object]] = [
        {
            "case": f"batched, order 8, {config['points']} points, chunk {config['chunk']}",
            **{k: v for k, v in med.items() if k.split("_")[1] in ("eval", "shard", "gather")},
            "speedup": eval_speedup,
            "efficiency": eval_speedup / 2,
            "gather_share": med["pair_gather_s"] / med["pair_eval_s"],
            "points_per_rank": points,
            "bitwise_equal": True,
            "rounds": {"solo": solo["eval"], "pair": pair["eval"], "cpu_share": quiet["eval"]},
        },
        {
            "case": f"PINN step, N = {config['pinn_points']}",
            "solo_step_s": med["solo_pinn_s"],
            "pair_step_s": med["pair_pinn_s"],
            "pair_in_all_reduce_grads_s": med["pair_comm_s"],
            "pair_all_reduce_alone_s": med["pair_reduce_s"],
            "speedup": pinn_speedup,
            "efficiency": pinn_speedup / 2,
            "in_all_reduce_grads_share": med["pair_comm_s"] / med["pair_pinn_s"],
            "all_reduce_alone_share": med["pair_reduce_s"] / med["pair_pinn_s"],
            "weights_max_diff": weight_diff,
            "rounds": {"solo": solo["pinn"], "pair": pair["pinn"], "cpu_share": quiet["pinn"]},
        },
    ]
    for row in rows:
        row["dtype"] = args.dtype
    print(
        table(
            ["case", "1 proc", "2 procs", "speedup", "efficiency", "communication"],
            [
                [
                    str(rows[0]["case"]),
                    f"{med['solo_eval_s']:.2f} s",
                    f"{med['pair_eval_s']:.2f} s (shard {med['pair_shard_s']:.2f} s)",
                    f"{eval_speedup:.2f}x",
                    f"{eval_speedup / 2:.0%}",
                    f"all-gather {med['pair_gather_s'] * 1e3:.0f} ms "
                    f"({med['pair_gather_s'] / med['pair_eval_s']:.1%})",
                ],
                [
                    str(rows[1]["case"]),
                    f"{med['solo_pinn_s'] * 1e3:.0f} ms",
                    f"{med['pair_pinn_s'] * 1e3:.0f} ms",
                    f"{pinn_speedup:.2f}x",
                    f"{pinn_speedup / 2:.0%}",
                    f"in all_reduce_grads {med['pair_comm_s'] * 1e3:.1f} ms "
                    f"({med['pair_comm_s'] / med['pair_pinn_s']:.1%}), alone "
                    f"{med['pair_reduce_s'] * 1e3:.1f} ms",
                ],
            ],
        )
    )
    print(f"points per rank {points}; PINN weights 1 vs 2 processes: max diff {weight_diff:.1e}")
    shares = {k: " ".join(f"{q:.2f}" for q in v) for k, v in quiet.items()}
    print(f"core share of the busiest rank per round: eval {shares['eval']}, pinn {shares['pinn']}")
    name = "bench_distributed" + ("" if args.chunk_size == 8192 else f"_chunk{args.chunk_size}")
    print(f"wrote {write_json(name, rows)}")


if __name__ == "__main__":
    main()
