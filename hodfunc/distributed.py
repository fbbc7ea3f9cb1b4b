"""hodfunc on ``torch.distributed`` (gloo on CPU, NCCL on GPUs, launched with ``torchrun``).

A module of its own rather than a ``process_group=`` option on ``hodfunc.batched``: what comes
back depends on the communication asked for (the full result, on every rank or on one, or this
rank's shard with its offsets), which is a different return type per choice; the split, the
agreement between ranks and the collectives are one concern that ``hodfunc.batched`` (one
process, no communication) should not carry; and the same module holds the gradient sums of
distributed training, which are no option of ``batched`` at all.

- ``batched(fn, chunk_size=c, result="all" | "one" | "shard")``: every rank passes the whole
  batch and evaluates its share, cut on the one-process chunk grid, so the result is bitwise
  equal to ``hodfunc.batched(fn, chunk_size=c)`` in one process. ``shard_range`` gives the
  split, to build only the local points.
- ``clipped_grad_sum``: DP-SGD's clipped sum of a batch split over the ranks, all-reduced, with
  the noise added once (on rank 0, from a seeded generator).
- ``all_reduce_grads``: the gradient sum of a training step whose loss calls hodfunc
  transforms on a plain network (a PINN residual). Alternatively wrap the module whose
  ``forward`` computes the residual in ``DistributedDataParallel``. A DDP module called *inside*
  a transform cannot work (its forward prepares the all-reduce on traced tensors) and is refused
  with an ``ArgumentTypeError`` where hodfunc.distributed can see it.
- ``RankError``: raised on every other rank when one rank fails, so that none hangs.

>>> import tempfile, torch, torch.distributed as dist, hodfunc, hodfunc.distributed as hd
>>> dist.init_process_group("gloo", store=dist.FileStore(tempfile.mktemp(), 1), rank=0,
...                         world_size=1)
>>> hd.batched(hodfunc.derivative(torch.exp, order=3), chunk_size=2)(torch.zeros(3))
tensor([1., 1., 1.])
>>> dist.destroy_process_group()
"""

from __future__ import annotations

from ._distributed._batched import Shard as Shard
from ._distributed._batched import batched as batched
from ._distributed._batched import shard_range as shard_range
from ._distributed._grads import all_reduce_grads as all_reduce_grads
from ._distributed._grads import clipped_grad_sum as clipped_grad_sum
from ._distributed._group import RankError as RankError

__all__ = ["RankError", "Shard", "all_reduce_grads", "batched", "clipped_grad_sum", "shard_range"]
