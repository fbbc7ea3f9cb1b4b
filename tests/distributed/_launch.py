"""Run a function on ``world`` gloo processes on localhost and collect what each rank returns.

Each rank is a fresh ``spawn`` process with one thread, joined to a gloo group through a
``FileStore`` in a temporary folder (no port to race for), with a collective timeout; it always
destroys its process group (after a barrier, so no rank tears down while another is still in a
collective), saves its results with ``torch.save`` and exits. The parent waits
at most ``timeout`` seconds, kills what is left, and fails with every rank's traceback.
"""

from __future__ import annotations

import datetime
import multiprocessing
import os
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

Results = dict[str, object]
Worker = Callable[[int, int], Results]


def _child(worker: Worker, rank: int, world: int, folder: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    warnings.simplefilter("error")  # as in the test run (pyproject's filterwarnings)
    warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", DeprecationWarning)
    out = Path(folder)
    try:
        dist.init_process_group(
            "gloo",
            init_method=(out / "store").resolve().as_uri(),
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=60),
        )
        try:
            results = worker(rank, world)
            dist.barrier()  # no rank tears down while another is still in a collective
        finally:
            dist.destroy_process_group()
        torch.save(results, out / f"rank{rank}.pt")
    except BaseException:
        (out / f"rank{rank}.err").write_text(traceback.format_exc())
        raise SystemExit(1) from None
    # done, group destroyed, results on disk: leave without interpreter finalisation, where a
    # gloo rank was seen to abort ("terminate called without an active exception")
    os._exit(0)


def run_ranks(worker: Worker, world: int, folder: Path, timeout: float = 120) -> list[Results]:
    """``worker(rank, world)`` on every rank of a fresh gloo group; the results in rank order."""
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_child, args=(worker, r, world, str(folder)), daemon=True)
        for r in range(world)
    ]
    for p in procs:
        p.start()
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout)
    for p in procs:
        p.join(max(0.0, (deadline - datetime.datetime.now()).total_seconds()))
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(10)
    errors = [
        f"--- rank {r}:\n{(folder / f'rank{r}.err').read_text()}"
        for r in range(world)
        if (folder / f"rank{r}.err").exists()
    ]
    if hung or errors or any(p.exitcode != 0 for p in procs):
        codes = [p.exitcode for p in procs]
        raise AssertionError(
            f"{world} gloo ranks: still running after {timeout} s {hung}, exit codes {codes}\n"
            + "\n".join(errors)
        )
    loaded: list[Results] = [
        torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(world)
    ]
    return loaded
