"""Every ``torch.distributed`` call hodfunc makes: the group, agreement, gathers, sums.

The rest of ``hodfunc._distributed`` reads as plain typed Python on top of these helpers.

Agreement first. A collective that one rank never reaches hangs every other rank until the
group's timeout; so where a rank's own work can fail (the user's function raising on its share),
the ranks first exchange what happened (``agree``: one small ``all_gather_object``) and then all
raise together: the failing rank its own error, the others a ``RankError`` naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed import ProcessGroup

from .._errors import ArgumentError, ArgumentTypeError, HodfuncError, message

T = TypeVar("T")


class RankError(HodfuncError, RuntimeError):
    """Another rank of the process group failed in the same collective call; every rank raises,
    so none waits for the others until the group's timeout. ``rank`` is the first failing rank
    (in the group), ``text`` its error."""

    def __init__(self, text: str, *, rank: int, error: str) -> None:
        super().__init__(text)
        self.rank = rank
        self.error = error


@dataclass(frozen=True)
class Group:
    """A resolved process group: the handle torch wants, this rank and the size, in the group."""

    handle: ProcessGroup | None
    rank: int
    size: int

    def global_rank(self, rank: int) -> int:
        """The global rank of group rank ``rank`` (what ``dst=`` of a collective takes)."""
        if self.handle is None:
            return rank
        return dist.get_global_rank(self.handle, rank)


def resolve(api: str, group: object) -> Group:
    """The process group to use (``None``: the default one), checked to be initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        raise ArgumentError(
            message(
                api,
                "needs an initialised torch.distributed process group",
                "none (torch.distributed.is_initialized() is False)",
                'Call torch.distributed.init_process_group("gloo" or "nccl") first (torchrun sets '
                "the environment it reads), or use hodfunc.batched in one process.",
            )
        )
    if group is not None and not isinstance(group, ProcessGroup):
        raise ArgumentTypeError(
            message(
                api,
                "group must be None (the default group) or a torch.distributed ProcessGroup",
                f"{group!r} of type {type(group).__name__}",
                "Pass the result of torch.distributed.new_group(...), or leave it out.",
            )
        )
    rank = dist.get_rank(group)
    if rank < 0:
        raise ArgumentError(
            message(
                api,
                "this process must be a member of the process group",
                f"a group without global rank {dist.get_rank()}",
                "Call it only on the ranks of that group.",
            )
        )
    return Group(group, rank, dist.get_world_size(group))


def agree(api: str, g: Group, error: BaseException | None, payload: T) -> list[T]:
    """Every rank's ``payload``; if any rank passes an ``error``, every rank raises.

    The failing rank re-raises its own error (its traceback intact), the others a ``RankError``
    naming the first failing rank and its message.
    """
    text = None if error is None else f"{type(error).__name__}: {error}"
    gathered: list[object] = [None] * g.size
    dist.all_gather_object(gathered, (text, payload), group=g.handle)
    entries: list[tuple[str | None, T]] = gathered  # type: ignore[assignment]  # from pickle
    failed = [(r, t) for r, (t, _) in enumerate(entries) if t is not None]
    if error is not None:
        raise error
    if failed:
        rank, what = failed[0]
        raise RankError(
            message(
                api,
                f"rank {rank} of the process group failed, so every rank stops",
                what,
                "Fix the error that rank reports; its traceback is in its own output.",
            ),
            rank=rank,
            error=what,
        )
    return [p for _, p in entries]


def gather_rows(
    g: Group, local: Tensor, counts: Sequence[int], *, dst: int | None
) -> Tensor | None:
    """The rows of every rank in rank order: on every rank (``dst=None``) or on group rank
    ``dst`` (``None`` elsewhere). ``counts[r]`` is rank ``r``'s number of rows; ``local`` holds
    this rank's. Uneven counts are padded to the largest for the collective and cut after it;
    rows are copied bit for bit."""
    most = max(counts)
    send = local
    if local.shape[0] != most:
        send = local.new_zeros((most, *local.shape[1:]))
        send[: local.shape[0]] = local
    send = send.contiguous()
    receiving = dst is None or g.rank == dst
    out = local.new_empty((g.size * most, *local.shape[1:])) if receiving else None
    views = None if out is None else [out.narrow(0, r * most, most) for r in range(g.size)]
    if dst is None:
        assert views is not None
        dist.all_gather(views, send, group=g.handle)
    else:
        dist.gather(send, views, dst=g.global_rank(dst), group=g.handle)
    if out is None or views is None:
        return None
    if all(c == most for c in counts):
        return out
    return torch.cat([v[:c] for v, c in zip(views, counts, strict=True)])


def sum_in_place(g: Group, tensors: Sequence[Tensor]) -> None:
    """Sum ``tensors`` over the ranks, in place: one all-reduce per dtype and device, through
    one flat buffer (every rank must pass the same shapes in the same order)."""
    groups: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    for same in groups.values():
        flat = torch.cat([t.reshape(-1) for t in same])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=g.handle)
        offset = 0
        for t in same:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()
