"""Running a traced ``Program`` with the free argument replaced by its coefficients.

Ops that do not depend on the free argument run unchanged (once, on ordinary tensors); ops that do
run their Taylor rule. Everything is plain torch on ordinary tensors, so a propagation composes
with ``torch.func.vmap``, ``torch.func.grad`` and autograd like any other torch code.

Memory: a value is dropped after its last reader (``Program.releases``), and ``_plan`` says which
rules may overwrite an argument or leave out first orders nothing reads.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from .._functorch import may_record
from ._plan import plan
from ._rules import Context, Jet, keeps_affine, lookup
from ._trace import Program, Ref

__all__ = ["run"]


def _resolve(value: object, env: list[object]) -> object:
    if type(value) is Ref:
        return env[value.slot]
    if isinstance(value, (list, tuple)):
        return type(value)(_resolve(v, env) for v in value)
    if isinstance(value, dict):
        return {k: _resolve(v, env) for k, v in value.items()}
    return value


def run(
    program: Program,
    inputs: Sequence[Tensor],
    x: Jet | Tensor,
    ctx: Context,
    *,
    first_orders: bool = True,
) -> object:
    """Evaluate ``program`` on ``inputs`` with slot ``program.x_slot`` holding ``x`` (a jet).

    ``first_orders=False``: the caller reads only the output's value and summed second order
    (collapsed mode), so rules may leave out first orders that nothing downstream reads.
    """
    env: list[object] = [None] * program.n_slots
    env[: len(inputs)] = inputs
    env[program.x_slot] = x
    for slot, constant in program.constants.items():
        env[slot] = constant
    seeds = (x.split or (x.c,)) if isinstance(x, Jet) else (x,)
    tensors = (*inputs, *seeds, *program.constants.values())
    steps = plan(program, first_orders=first_orders, overwrite=not any(map(may_record, tensors)))
    none: frozenset[int] = frozenset()
    for ins, releases, step in zip(program.instructions, program.releases, steps, strict=True):
        args = tuple([_resolve(a, env) for a in ins.args])
        kwargs = {k: _resolve(v, env) for k, v in ins.kwargs.items()} if ins.kwargs else {}
        jets = _jets(args) + _jets(tuple(kwargs.values())) if ins.depends else []
        if jets:
            ctx.piecewise.clear()
            ctx.donated = (
                frozenset(id(env[slot]) for slot in step.donated) if step.donated else none
            )
            ctx.first = step.first
            ctx.name, ctx.overload = ins.name, ins.overload
            out = lookup(ins.name)(ctx, ins.fn, args, kwargs)
            tags = frozenset(ctx.piecewise.union(*(j.through for j in jets if j.through)))
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
        return out.retagged(out.through | tags, affine)
    if isinstance(out, (list, tuple)):
        return type(out)(_retag(o, tags, affine) for o in out)
    return out
