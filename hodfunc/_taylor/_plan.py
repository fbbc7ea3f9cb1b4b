"""What a propagation may skip, decided once per traced program: static analyses of its graph.

- **Overwriting** (``Step.donated``). A rule may write its result into an argument's coefficients
  instead of new memory (the collapsed activation scales the linear layer's result in place) when
  nothing can see them any more: the argument is read for the last time, it and every view of it
  are dead, and it was computed by a rule known to return new coefficients (``RuleSpec.fresh``), so
  it shares memory with nothing else. Views are followed through ATen's alias annotations; any op
  whose aliasing is unknown makes everything it read ineligible. Adding a constant
  (``RuleSpec.adds_in_place``) returns new memory only when its argument was given to it (then it
  adds in place, or returns the argument itself for ``x + 0``). Nothing is overwritten when
  autograd or a differentiation transform may record the run (``_functorch.may_record``: it looks
  through ``vmap``'s wrappers and at the tensors the trace baked in), since a backward formula may
  have saved the argument.
- **First orders nobody reads** (``Step.first``). In collapsed mode a caller that wants only the
  Laplacian reads the output's value and summed second order. Walking back from the output, row-wise
  linear ops pass that on to their argument; anything else (an activation, whose second order
  needs its input's first orders; a product; an op this analysis does not know) needs all rows.
  An activation whose first orders nothing reads then skips computing them: for an MLP, the last
  activation and the last linear layer work on two rows instead of ``n + 2``.

Holding every intermediate to the end of a run, and allocating a new result for every rule, made
each call of the collapsed Laplacian fault in fresh pages for all of them: a third of its time at
256 points.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from torch.utils import _pytree as pytree

from .._functorch import aliases_input
from ._rules import spec_of
from ._trace import Program, Ref

__all__ = ["Step", "plan"]


@dataclass(frozen=True)
class Step:
    """What the rule of one instruction may do beyond computing its result."""

    donated: frozenset[int] = frozenset()
    """Argument slots whose coefficients the rule may overwrite."""
    first: bool = True
    """Whether anything downstream reads the result's first-order coefficients."""


_KEEP_ALL = Step()
_PLANS: weakref.WeakKeyDictionary[Program, dict[tuple[bool, bool], tuple[Step, ...]]] = (
    weakref.WeakKeyDictionary()
)


def plan(program: Program, *, first_orders: bool, overwrite: bool) -> tuple[Step, ...]:
    """One ``Step`` per instruction of ``program``.

    ``first_orders``: the caller reads the output's first orders. ``overwrite``: rules may
    overwrite dead arguments (false when autograd records the run).
    """
    if first_orders and not overwrite:
        return (_KEEP_ALL,) * len(program.instructions)
    plans = _PLANS.setdefault(program, {})
    key = (first_orders, overwrite)
    if key not in plans:
        reads = [_slots((ins.args, ins.kwargs)) for ins in program.instructions]
        donated = _donations(program, reads) if overwrite else [frozenset()] * len(reads)
        first = _first_orders_read(program, reads, first_orders)
        plans[key] = tuple(Step(d, f) for d, f in zip(donated, first, strict=True))
    return plans[key]


def _slots(value: object) -> list[int]:
    return [leaf.slot for leaf in pytree.tree_leaves(value) if isinstance(leaf, Ref)]


def _donations(program: Program, reads: list[list[int]]) -> list[frozenset[int]]:
    end = len(program.instructions)
    jets = {program.x_slot} | {ins.slot for ins in program.instructions if ins.depends}
    last: dict[int, int] = {}
    for index, (ins, slots) in enumerate(zip(program.instructions, reads, strict=True)):
        last[ins.slot] = index
        last.update(dict.fromkeys(slots, index))
    last.update(dict.fromkeys(_slots(program.output), end))  # the caller's: never dead
    # storage: every slot's root is the slot whose fresh allocation it may share
    root: dict[int, int] = {}
    shared: set[int] = set(range(program.n_inputs)) | set(program.constants)
    conditional: dict[int, int] = {}  # an add's result: new memory iff its jet argument is given
    for index, (ins, slots) in enumerate(zip(program.instructions, reads, strict=True)):
        carried = [slot for slot in slots if slot in jets]
        if ins.depends and spec_of(ins.name).fresh:
            root[ins.slot] = ins.slot
        elif ins.depends and spec_of(ins.name).adds_in_place and len(carried) == 1:
            root[ins.slot] = ins.slot
            conditional[index] = carried[0]
        elif ins.depends and slots and (aliases_input(ins.fn) or spec_of(ins.name).view):
            root[ins.slot] = root.get(slots[0], slots[0])
        else:  # unknown aliasing: neither it nor anything it read may be overwritten
            root[ins.slot] = ins.slot
            shared.add(ins.slot)
            shared.update(root.get(slot, slot) for slot in slots)
    alive_until: dict[int, int] = {}
    for slot, base in root.items():
        alive_until[base] = max(alive_until.get(base, -1), last.get(slot, -1))
    plan = []
    for index, (ins, slots) in enumerate(zip(program.instructions, reads, strict=True)):
        given = frozenset(
            slot
            for slot in slots
            if slots.count(slot) == 1
            and root.get(slot, slot) not in shared
            and alive_until.get(root.get(slot, slot), end) == index
        )
        if index in conditional and conditional[index] not in given:
            # the result may be the argument itself (x + 0), which lives on: neither is free
            shared.update((ins.slot, root.get(conditional[index], conditional[index])))
        plan.append(given)
    return plan


def _first_orders_read(program: Program, reads: list[list[int]], at_output: bool) -> list[bool]:
    jets = {program.x_slot} | {ins.slot for ins in program.instructions if ins.depends}
    read = dict.fromkeys(_slots(program.output), at_output)
    for ins, slots in zip(reversed(program.instructions), reversed(reads), strict=True):
        needed = read.get(ins.slot, False)
        carried = [slot for slot in slots if slot in jets]
        passes_on = spec_of(ins.name).row_wise and len(carried) == 1
        for slot in carried:
            read[slot] = read.get(slot, False) or (needed if passes_on else True)
    return [
        read.get(ins.slot, False) or not spec_of(ins.name).unary for ins in program.instructions
    ]
