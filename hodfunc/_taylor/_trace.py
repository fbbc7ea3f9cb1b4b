"""Tracing a user's function to ATen operations, and the per-transform cache of traces.

This is the one module that talks to untyped torch internals (``make_fx``, decompositions, fx
graphs, functorch's interpreter stack); it hands the rest of the package a typed ``Program``.

Why a ``make_fx`` trace and not a ``__torch_dispatch__`` subclass carrying the coefficients:

- ``__torch_dispatch__`` runs *below* autograd. The coefficient arithmetic done there would be
  invisible to autograd: the result could not be differentiated with respect to the weights, and
  training on a loss built from high-order derivatives (an acceptance line) would be wrong. A
  subclass at the ``__torch_function__`` level sees ``torch.nn.functional`` calls instead of a
  small set of ATen primitives, so it would need hundreds of rules.
- A wrapper subclass also pays Python dispatch on every op of every call, including ops that do not
  depend on the input, and nests awkwardly inside ``torch.func.vmap``/``grad``.
- The trace, by contrast, is made once per input signature (fake tensors: no compute, and
  data-dependent control flow raises instead of being baked in), then interpreted with plain torch
  ops on ordinary tensors. Those ops compose with ``vmap``, ``grad`` and autograd for free, and
  ops that do not depend on the input run unchanged.

The trace's two known pitfalls are handled here:

- Closed-over tensors. ``make_fx`` turns a tensor the function closes over into a graph constant.
  Under ``torch.func.grad`` that constant is an unwrapped copy, so gradients would silently vanish;
  and a transform built once would keep using stale tensors after the closure changed. So the
  tensors a function can reach (``_reach``: closure cells, referenced globals, ``functools.partial``
  arguments, attributes of objects, parameters and buffers of modules) are *lifted to graph
  inputs*: during tracing a ``TorchFunctionMode`` swaps each for a placeholder, and every call
  passes the current ones. A functorch-wrapped tensor the walk did not find makes tracing fail
  loudly instead of silently.
- Stale traces. A trace bakes in every Python value the function read. The cache key holds the
  shapes, dtypes and devices of every tensor argument and reached tensor, the argument structure
  and everything ``_reach`` collects (code objects, numbers, flags, ``module.training``...); under
  ``vmap`` it uses per-sample shapes. A function the walk cannot see through is traced on every
  call. One cache (``SHARED``) serves every transform, bounded, locked for threads, and cleared by
  ``hodfunc.clear_cache()``. ``TRACES`` counts traces so tests can check it.
"""

from __future__ import annotations

import functools
import operator
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

from .._errors import UnsupportedOperationError, message
from .._functional import RANDOM_ATEN
from .._functorch import outside_functorch, traced_point, transformed
from ._reach import Reach, reach
from ._rules import DECOMPOSE

__all__ = [
    "SHARED",
    "TRACES",
    "TRACE_LOCK",
    "Instruction",
    "Program",
    "Ref",
    "TraceCache",
    "reach_of",
]

TRACES = [0]
"""How many traces this process made (a one-element list so tests can read it)."""


@functools.cache
def _decompositions() -> Mapping[torch._ops.OpOverload, Callable[..., object]]:
    from torch._decomp import get_decompositions

    table = get_decompositions(DECOMPOSE)
    return cast("Mapping[torch._ops.OpOverload, Callable[..., object]]", table)


@dataclass(frozen=True)
class Ref:
    """A value computed earlier in the program, by its slot."""

    slot: int


@dataclass(frozen=True)
class Instruction:
    """One ATen call: ``slot <- fn(*args, **kwargs)`` with ``Ref``s standing for earlier values."""

    name: str
    """The op's name without namespace and overload, e.g. ``"tanh"`` or ``"getitem"``."""
    overload: str
    fn: Callable[..., object]
    args: tuple[object, ...]
    kwargs: Mapping[str, object]
    slot: int
    depends: bool
    """Whether the value depends on the free argument (then it needs a Taylor rule)."""

    @property
    def qualified(self) -> str:
        """The op as users see it in messages, e.g. ``aten.tanh.default``."""
        return f"aten.{self.name}.{self.overload}" if self.overload else self.name


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: a cache key
class Program:
    """A traced function: inputs in slots ``0..n_inputs-1``, constants, instructions, output."""

    n_inputs: int
    x_slot: int
    constants: Mapping[int, Tensor]
    instructions: tuple[Instruction, ...]
    output: object
    n_slots: int
    dependent_ops: frozenset[str] = field(default_factory=frozenset)
    random_ops: frozenset[str] = field(default_factory=frozenset)
    """Ops that draw random numbers, anywhere in the program (``_functional.RANDOM_ATEN``)."""
    releases: tuple[tuple[int, ...], ...] = ()
    """Per instruction, the slots read for the last time there (or never read): the interpreter
    drops them after it, so an intermediate's memory is reused instead of held to the end."""


class _Lift(TorchFunctionMode):
    """During tracing: swap captured tensors for placeholders; refuse unseen functorch tensors."""

    def __init__(self, swap: dict[int, Tensor], api: str, *, own_vmap: bool = False) -> None:
        super().__init__()
        self.swap = swap
        self.api = api
        self.own_vmap = own_vmap
        """Tensors batched at the current level are the trace's own (``vmap`` over points)."""

    def _map(self, t: Tensor) -> Tensor:
        new = self.swap.get(id(t))
        if new is not None:
            return new
        if self.own_vmap and traced_point(t):
            return t
        if transformed(t):
            raise UnsupportedOperationError(
                message(
                    self.api,
                    "Taylor mode must see every tensor the function uses under torch.func "
                    "transforms, but the function reaches one it cannot find in its closure",
                    f"a tensor of shape {tuple(t.shape)}",
                    "Pass that tensor as an argument, or use method='nested'.",
                )
            )
        return t

    def __torch_function__(
        self,
        func: Callable[..., object],
        types: object,
        args: tuple[object, ...] = (),
        kwargs: dict[str, object] | None = None,
    ) -> object:
        args, kw = pytree.tree_map_only(Tensor, self._map, (args, kwargs or {}))
        return func(*args, **kw)


def _signature(t: Tensor) -> tuple[object, ...]:
    return (tuple(t.shape), t.dtype, t.device)


def _example(t: Tensor) -> Tensor:
    return torch.zeros(t.shape, dtype=t.dtype, device=t.device)


def _refs(value: object, ref: Callable[[torch.fx.Node], Ref]) -> object:
    """``value`` with every graph node replaced by the ``Ref`` of its slot."""
    if isinstance(value, torch.fx.Node):
        return ref(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_refs(v, ref) for v in value)
    if isinstance(value, dict):
        return {k: _refs(v, ref) for k, v in value.items()}
    return value


def _private_in_place(name: str, node: torch.fx.Node) -> bool:
    """An in-place op (``add_``) on an intermediate that nothing else reads may run out of place.

    Decompositions emit such ops (``squeeze_`` after a matmul). An in-place op on an input, a
    captured tensor or a value with other readers (a view taken earlier) keeps its name, has no
    rule, and so falls back: a rule returns a new value and would drop the mutation.
    """
    if not name.endswith("_") or name.startswith("_") or not node.args:
        return False
    target = node.args[0]
    return (
        isinstance(target, torch.fx.Node)
        and target.op == "call_function"
        and len(target.users) == 1
        and isinstance(target.target, torch._ops.OpOverload)
        # a view's mutation writes through to its base, which out-of-place would silently drop
        and all(r.alias_info is None for r in target.target._schema.returns)
    )


def _compile(gm: torch.fx.GraphModule, x_slot: int) -> Program:
    graph = gm.graph
    graph.eliminate_dead_code()
    slots: dict[torch.fx.Node, int] = {}
    constants: dict[int, Tensor] = {}
    instructions: list[Instruction] = []
    depends: set[int] = set()
    dependent_ops: set[str] = set()
    random_ops: set[str] = set()
    output: object = None
    n_inputs = 0

    def ref(node: torch.fx.Node) -> Ref:
        return Ref(slots[node])

    def uses_x(value: object) -> bool:
        leaves = pytree.tree_leaves(value)
        return any(isinstance(leaf, Ref) and leaf.slot in depends for leaf in leaves)

    for node in graph.nodes:
        if node.op == "placeholder":
            slots[node] = len(slots)
            n_inputs += 1
            if slots[node] == x_slot:
                depends.add(x_slot)
        elif node.op == "get_attr":
            slots[node] = len(slots)
            constants[slots[node]] = cast("Tensor", getattr(gm, cast("str", node.target)))
        elif node.op == "call_function":
            slots[node] = len(slots)
            args = cast("tuple[object, ...]", _refs(node.args, ref))
            kwargs = cast("dict[str, object]", _refs(node.kwargs, ref))
            target = node.target
            if target is operator.getitem:
                name, overload = "getitem", ""
            elif isinstance(target, torch._ops.OpOverload):
                name = target._schema.name.split("::")[-1]
                overload = target._overloadname
                if _private_in_place(name, node):
                    name = name[:-1]
            else:
                name, overload = str(target), ""
            dep = uses_x((args, kwargs))
            if dep:
                depends.add(slots[node])
            instruction = Instruction(
                name,
                overload,
                cast("Callable[..., object]", target),
                args,
                kwargs,
                slots[node],
                dep,
            )
            if dep:
                dependent_ops.add(instruction.qualified)
            if name.rstrip("_") in RANDOM_ATEN:
                random_ops.add(instruction.qualified)
            instructions.append(instruction)
        elif node.op == "output":
            output = _refs(node.args[0], ref)
    return Program(
        n_inputs,
        x_slot,
        constants,
        tuple(instructions),
        output,
        len(slots),
        frozenset(dependent_ops),
        frozenset(random_ops),
        _releases(instructions, output),
    )


def _releases(instructions: Sequence[Instruction], output: object) -> tuple[tuple[int, ...], ...]:
    """For each instruction, the slots whose last reader it is, or that it writes and none read."""
    last: dict[int, int] = {}
    for index, ins in enumerate(instructions):
        last[ins.slot] = index
        for leaf in pytree.tree_leaves((ins.args, ins.kwargs)):
            if isinstance(leaf, Ref):
                last[leaf.slot] = index
    kept = {leaf.slot for leaf in pytree.tree_leaves(output) if isinstance(leaf, Ref)}
    after: list[list[int]] = [[] for _ in instructions]
    for slot, index in last.items():
        if slot not in kept:
            after[index].append(slot)
    return tuple(tuple(slots) for slots in after)


@dataclass(frozen=True)
class Bound:
    """A program and the tensors to feed its input slots for one call."""

    program: Program
    inputs: tuple[Tensor, ...]
    cached: bool = True
    """Whether the program is in the cache (not traced afresh for this call alone)."""


TRACE_LOCK = threading.RLock()
"""Held while tracing and while a cache is read or written: ``make_fx`` keeps global state, so
two threads must not trace at once (re-entrant: a Taylor transform may run inside a trace)."""


def reach_of(
    fn: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> Reach:
    """What a call's function and non-tensor arguments can reach (``_reach``)."""
    leaves = pytree.tree_leaves((args, dict(kwargs)))
    return reach(fn, [leaf for leaf in leaves if not isinstance(leaf, Tensor)])


class TraceCache:
    """Traces keyed by everything a trace depends on (module docstring), least recently used
    dropped first.

    Traces of a whole batch (``batched=True``, one per batch size) are kept for the last
    ``batch_sizes_kept`` sizes only: a loop over ever-changing batch sizes must not grow the cache
    without bound.
    """

    BATCH_SIZES_KEPT = 8
    PROGRAMS_KEPT = 256

    def __init__(
        self, *, programs_kept: int = PROGRAMS_KEPT, batch_sizes_kept: int = BATCH_SIZES_KEPT
    ) -> None:
        self._programs: OrderedDict[Hashable, Program] = OrderedDict()
        self._batched: OrderedDict[Hashable, Program] = OrderedDict()
        self._kept = {False: programs_kept, True: batch_sizes_kept}

    def clear(self) -> None:
        """Forget every trace."""
        with TRACE_LOCK:
            self._programs.clear()
            self._batched.clear()

    def __len__(self) -> int:
        return len(self._programs) + len(self._batched)

    def bind(
        self,
        api: str,
        fn: Callable[..., object],
        args: tuple[object, ...],
        kwargs: Mapping[str, object],
        argnum: int,
        *,
        batched: bool = False,
        reached: Reach | None = None,
    ) -> Bound:
        """The program for this call (traced on first use) and the tensors to feed it.

        ``batched``: ``args[argnum]`` holds a batch of points along dim 0, and the program is
        ``vmap`` of ``fn`` over them (the other arguments shared). ``reached``: this call's
        ``reach_of``, when the caller has it already. A function that ``reached.uncacheable``
        is traced afresh (the caller warns).
        """
        leaves, spec = pytree.tree_flatten((args, dict(kwargs)))
        before = len(pytree.tree_leaves(args[:argnum]))
        tensor_pos = [i for i, leaf in enumerate(leaves) if isinstance(leaf, Tensor)]
        x_slot = tensor_pos.index(before)
        tensors = tuple(cast("Tensor", leaves[i]) for i in tensor_pos)
        if reached is None:
            reached = reach_of(fn, args, kwargs)
        argument = {id(t): i for i, t in enumerate(tensors)}
        # a reached tensor that is also an argument stays what the function reads (a constant)
        captured = tuple(t for t in reached.tensors if id(t) not in argument)
        key = (
            batched,
            spec,
            x_slot,
            tuple(_signature(t) for t in tensors),
            reached.key,
            tuple(argument.get(id(t), -1) for t in reached.tensors),
        )
        programs = self._batched if batched else self._programs
        with TRACE_LOCK:
            program = None if reached.uncacheable else programs.get(key)
            if program is None:
                program = self._trace(
                    api, fn, leaves, spec, tensor_pos, captured, x_slot, argnum if batched else None
                )
                if not reached.uncacheable:
                    programs[key] = program
                    if len(programs) > self._kept[batched]:
                        programs.popitem(last=False)
            else:
                programs.move_to_end(key)
        return Bound(program, tensors + captured, cached=not reached.uncacheable)

    @staticmethod
    def _trace(
        api: str,
        fn: Callable[..., object],
        leaves: list[object],
        spec: pytree.TreeSpec,
        tensor_pos: list[int],
        captured: tuple[Tensor, ...],
        x_slot: int,
        batch_argnum: int | None = None,
    ) -> Program:
        from torch.fx.experimental.proxy_tensor import make_fx

        n_args = len(tensor_pos)

        def traced(*flat: Tensor) -> object:
            filled = list(leaves)
            for pos, t in zip(tensor_pos, flat[:n_args], strict=True):
                filled[pos] = t
            call_args, call_kwargs = pytree.tree_unflatten(filled, spec)
            swap = {id(c): p for c, p in zip(captured, flat[n_args:], strict=True)}
            if batch_argnum is None:
                with _Lift(swap, api):
                    return fn(*call_args, **call_kwargs)

            def point(x: Tensor) -> object:
                point_args = list(call_args)
                point_args[batch_argnum] = x
                with _Lift(swap, api, own_vmap=True):
                    return fn(*point_args, **call_kwargs)

            return torch.func.vmap(point)(call_args[batch_argnum])

        TRACES[0] += 1
        with TRACE_LOCK, outside_functorch():
            examples = [_example(cast("Tensor", leaves[i])) for i in tensor_pos]
            examples += [_example(c) for c in captured]
            try:
                gm = make_fx(
                    traced,
                    decomposition_table=_decompositions(),
                    tracing_mode="fake",
                    _allow_non_fake_inputs=True,
                )(*examples)
            except UnsupportedOperationError:
                raise
            except Exception as error:
                raise UnsupportedOperationError(
                    message(
                        api,
                        "Taylor mode traces the function to ATen operations once per input "
                        "shape, which needs code without data-dependent control flow or .item()",
                        f"{type(error).__name__}: {str(error).splitlines()[0][:200]}",
                        'Use method="nested" (or "auto", which falls back to it).',
                    )
                ) from error
        return _compile(gm, x_slot)


SHARED = TraceCache(programs_kept=512, batch_sizes_kept=64)
"""The one cache every Taylor-mode transform uses: a transform rebuilt on every call (inside a
loss) finds the trace of the last one."""
