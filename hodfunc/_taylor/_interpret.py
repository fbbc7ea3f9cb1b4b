"""Running a traced ``Program`` with the free argument replaced by its coefficients.

Ops that do not depend on the free argument run unchanged (once, on ordinary tensors); ops that do
run their Taylor rule. Everything is plain torch on ordinary tensors, so a propagation composes
with ``torch.func.vmap``, ``torch.func.grad`` and autograd like any other torch code.

Memory. A value is dropped after its last reader (``Program.releases``), so its memory is reused
as the run goes; holding every intermediate to the end made each call fault in fresh pages for all
of them (a third of the collapsed Laplacian's time at 256 points). And a rule may overwrite an
argument's coefficients instead of allocating its result when nothing can see them any more
(``donations``): the argument is read for the last time, it and every view of it are dead, it was
computed by a rule known to return new coefficients, and nothing in the run records a graph for
autograd (which would have saved it).
"""

from __future__ import annotations

import operator
import weakref
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils import _pytree as pytree

from ._rules import FRESH_RESULTS, Context, Jet, keeps_affine, lookup
from ._trace import Program, Ref

__all__ = ["run"]


def _resolve(value: object, env: list[object]) -> object:
    if isinstance(value, Ref):
        return env[value.slot]
    if isinstance(value, (list, tuple)):
        return type(value)(_resolve(v, env) for v in value)
    if isinstance(value, dict):
        return {k: _resolve(v, env) for k, v in value.items()}
    return value


def _has_jet(values: Sequence[object]) -> bool:
    for v in values:
        if isinstance(v, Jet):
            return True
        if isinstance(v, (list, tuple)) and any(isinstance(x, Jet) for x in v):
            return True
    return False


def run(program: Program, inputs: Sequence[Tensor], x: Jet | Tensor, ctx: Context) -> object:
    """Evaluate ``program`` on ``inputs`` with slot ``program.x_slot`` holding ``x`` (a jet)."""
    env: list[object] = [None] * program.n_slots
    env[: len(inputs)] = inputs
    env[program.x_slot] = x
    for slot, constant in program.constants.items():
        env[slot] = constant
    grads = any(t.requires_grad for t in (*inputs, x.c if isinstance(x, Jet) else x))
    plan = (frozenset(),) * len(program.instructions) if grads else donations(program)
    for ins, releases, donated in zip(program.instructions, program.releases, plan, strict=True):
        args = _resolve(ins.args, env)
        kwargs = _resolve(ins.kwargs, env)
        assert isinstance(args, tuple)
        assert isinstance(kwargs, dict)
        if ins.depends and (_has_jet(args) or _has_jet(tuple(kwargs.values()))):
            ctx.piecewise.clear()
            ctx.donated = frozenset(id(env[slot]) for slot in donated)
            out = lookup(ins.name)(ctx, ins.fn, args, kwargs)
            jets = _jets(args) + _jets(tuple(kwargs.values()))
            tags = frozenset(ctx.piecewise.union(*(j.through for j in jets)))
            affine = keeps_affine(ins.name, args, jets)
            env[ins.slot] = _retag(out, tags, affine) if tags or affine else out
        else:
            env[ins.slot] = ins.fn(*args, **kwargs)
        del args, kwargs
        for slot in releases:
            env[slot] = None
    result = _resolve(program.output, env)
    ctx.reached = result.through if isinstance(result, Jet) else frozenset()
    return result


_PLANS: weakref.WeakKeyDictionary[Program, tuple[frozenset[int], ...]] = weakref.WeakKeyDictionary()


def donations(program: Program) -> tuple[frozenset[int], ...]:
    """Per instruction, the argument slots whose coefficients its rule may overwrite."""
    plan = _PLANS.get(program)
    if plan is None:
        plan = _PLANS[program] = _plan(program)
    return plan


def _plan(program: Program) -> tuple[frozenset[int], ...]:
    end = len(program.instructions)
    last: dict[int, int] = {}
    reads: list[list[int]] = []
    for index, ins in enumerate(program.instructions):
        slots = [x.slot for x in pytree.tree_leaves((ins.args, ins.kwargs)) if isinstance(x, Ref)]
        reads.append(slots)
        last[ins.slot] = index
        last.update(dict.fromkeys(slots, index))
    for x in pytree.tree_leaves(program.output):
        if isinstance(x, Ref):
            last[x.slot] = end  # the caller's: never dead
    # storage: every slot's root is the slot whose fresh allocation it may share
    root: dict[int, int] = {}
    shared: set[int] = set(range(program.n_inputs)) | set(program.constants)
    for ins, slots in zip(program.instructions, reads, strict=True):
        if ins.depends and ins.name in FRESH_RESULTS:
            root[ins.slot] = ins.slot
        elif ins.depends and slots and _is_view(ins.fn):
            root[ins.slot] = root.get(slots[0], slots[0])
        else:  # unknown aliasing: neither it nor anything it read may be overwritten
            root[ins.slot] = ins.slot
            shared.add(ins.slot)
            shared.update(root.get(slot, slot) for slot in slots)
    alive_until: dict[int, int] = {}
    for slot, base in root.items():
        alive_until[base] = max(alive_until.get(base, -1), last.get(slot, -1))
    plan = []
    for index, slots in enumerate(reads):
        plan.append(
            frozenset(
                slot
                for slot in slots
                if slots.count(slot) == 1
                and root.get(slot, slot) not in shared
                and alive_until.get(root.get(slot, slot), end) == index
            )
        )
    return tuple(plan)


def _is_view(fn: object) -> bool:
    if fn is operator.getitem:
        return True
    if isinstance(fn, torch._ops.OpOverload):
        return any(r.alias_info is not None for r in fn._schema.returns)
    return False


def _jets(values: Sequence[object]) -> list[Jet]:
    found: list[Jet] = []
    for v in values:
        if isinstance(v, Jet):
            found.append(v)
        elif isinstance(v, (list, tuple)):
            found += _jets(v)
    return found


def _retag(out: object, tags: frozenset[str], affine: bool) -> object:
    if isinstance(out, Jet):
        return Jet(out.c, out.through | tags, affine)
    if isinstance(out, (list, tuple)):
        return type(out)(_retag(o, tags, affine) for o in out)
    return out
