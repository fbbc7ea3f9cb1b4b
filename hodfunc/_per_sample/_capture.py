"""One batched forward and backward that captures each supported layer's input and output gradient.

This is the only place that talks to autograd's graph and to module hooks. Hooks are registered
on the caller's modules for the duration of one call and removed in ``finally``; parameters are
private leaves (``p.detach().requires_grad_()``) passed through ``functional_call``, so nothing
the caller owns is written.

Which parameters the batched pass may handle is decided, per call, by three checks:

1. the module has a rule (``_layers.rule_kind``, or a MultiheadAttention, whose projections
   ``_attention`` records while the batched pass runs), no forward hooks of the caller's (which
   may rewrite its output), and every call sees a batched input;
2. a probe forward on sample 0 alone sees the same calls with leading size 1 where the batch
   has ``B`` (so dimension 0 really is the sample dimension, e.g. not a seq-first transformer),
   and gives the same model output as row 0 of the batch (the model does not mix samples);
3. in autograd's graph every use of the parameter lies inside one of its module's calls (a
   weight tied into another layer, or used by a parent module directly, falls back), and the
   layers that share a parameter (MultiheadAttention's slots) own disjoint rows of it.

Everything else falls back to ``vmap(grad(functional_call))`` for just those parameters.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.autograd.graph import Node, get_gradient_edge
from torch.func import functional_call, grad, vmap
from torch.nn.modules.module import _global_forward_hooks

from .._errors import (
    NonFunctionalError,
    NonFunctionalModuleError,
    ShapeError,
    UnsupportedOperationError,
    message,
)
from .._functional import guard
from .._validate import check_output
from . import _attention, _layers

LossFn = Callable[..., Tensor]


@contextmanager
def quiet_vmap() -> Iterator[None]:
    """Silence vmap's "performance drop" notice for ops without a batching rule (e.g. CPU SDPA):
    the fallback is still correct, and the notice is about torch, not the caller's code."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="There is a performance drop", category=UserWarning
        )
        yield


def random_module_error(api: str, what: str) -> NonFunctionalModuleError:
    """The error for a model or loss that draws random numbers (Dropout in training mode)."""
    return NonFunctionalModuleError(
        message(
            api,
            "per-sample gradients need a model and loss that draw no random numbers (each sample "
            "would need its own draw, and one-sample passes would not reproduce the batch's)",
            what,
            "Call model.eval() to turn Dropout off (or set its p=0); draw any other noise "
            "outside the model and pass it in as a batch tensor.",
        )
    )


def _is_vmap_randomness(e: RuntimeError) -> bool:
    """Whether ``e`` is vmap's refusal of a random op (``randomness="error"``)."""
    return "random operation" in str(e) or "randomness" in str(e)


@contextmanager
def typed_random_errors(api: str) -> Iterator[None]:
    """Turn vmap's raw randomness error, and a random draw seen by the guard, into the
    ``NonFunctionalModuleError`` a training-mode BatchNorm gets too."""
    try:
        yield
    except NonFunctionalError as e:
        raise random_module_error(api, e.ops[0] if e.ops else "a random draw") from e
    except RuntimeError as e:
        if not _is_vmap_randomness(e):
            raise
        raise random_module_error(
            api, "a random operation under torch.func.vmap (e.g. functional dropout)"
        ) from e


@dataclass
class Record:
    """One call of a supported module: its input and output (or leading sizes, in the probe)."""

    name: str
    x: Tensor
    output: Tensor
    version: int
    batch_dim: int = 0
    """Where the samples are: 0, or 1 for a sequence-first call (``(T, B, ...)``), decided
    against the probe by ``covered_layers``."""


@dataclass(frozen=True)
class CapturedLayer:
    """A module with a per-layer rule, and the parameters the batched pass computes for it."""

    module: nn.Module
    kind: _layers.Kind
    params: Mapping[str, str]
    """``"weight"``/``"bias"`` -> the parameter's name in the model."""
    rows: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    """``"weight"``/``"bias"`` -> the rows of the parameter this layer owns, where it owns only
    some (a MultiheadAttention slot's share of ``in_proj_weight``); absent: all rows."""
    hooked: bool = True
    """Whether a forward hook on ``module`` records the calls (else ``_attention`` does)."""

    def param(self, local: str) -> str | None:
        """The model's name of the layer's ``local`` parameter (``"weight"``...), if computed."""
        return self.params.get(local)

    def part(self, local: str, t: Tensor, dim: int = 0) -> Tensor:
        """The layer's share of ``t``, a tensor laid out like the parameter from ``dim`` on."""
        rows = self.rows.get(local)
        return t if rows is None else t.narrow(dim, rows[0], rows[1] - rows[0])


@dataclass
class Context:
    """Everything one public call needs: the model seen functionally, with private leaves."""

    api: str
    model: nn.Module
    loss_fn: LossFn
    params: dict[str, Tensor]
    buffers: dict[str, Tensor]
    layers: dict[str, CapturedLayer] = field(default_factory=dict)
    """Module name -> the module with a rule, for every module the batched pass may cover."""
    # modules whose output is modified in place downstream: the hook hands on a clone
    clone_output: set[str] = field(default_factory=set)
    attention: dict[int, _attention.Spec] = field(default_factory=dict)
    """``id`` of a MultiheadAttention's first projection weight (as ``functional_call`` passes
    it) -> the module, for ``_attention.Attention``."""


def make_context(api: str, model: nn.Module, loss_fn: LossFn) -> Context:
    """Private leaves for the trainable parameters, and the modules with a per-layer rule."""
    params = {
        k: p.detach().requires_grad_(True) for k, p in model.named_parameters() if p.requires_grad
    }
    buffers = {k: b.detach() for k, b in model.named_buffers()}
    ctx = Context(api, model, loss_fn, params, buffers)
    owners: dict[int, list[str]] = {}
    names = {id(p): k for k, p in model.named_parameters()}
    for mname, module in model.named_modules(remove_duplicate=False):
        for local, p in module.named_parameters(recurse=False):
            owners.setdefault(id(p), []).append(f"{mname}.{local}")
    if _global_forward_hooks:  # a hook that may rewrite any output: no rule can be trusted
        return ctx
    for mname, module in model.named_modules():
        kind = _layers.rule_kind(module)
        if kind is None or module._forward_hooks:  # the caller's hooks may rewrite the output
            continue
        local = {}
        for pname in ("weight", "bias"):
            p = module._parameters.get(pname)
            if p is None or not p.requires_grad:
                continue
            if len(owners[id(p)]) != 1:  # shared between modules: fall back
                local = {}
                break
            local[pname] = names[id(p)]
        if local:
            ctx.layers[mname] = CapturedLayer(module, kind, local)
    for mname, module in model.named_modules():
        supported = isinstance(module, nn.MultiheadAttention) and _attention.supported(module)
        if supported and not module._forward_hooks:
            assert isinstance(module, nn.MultiheadAttention)
            _attention_layers(ctx, mname, module, owners, names)
    return ctx


def _attention_layers(
    ctx: Context,
    mname: str,
    module: nn.MultiheadAttention,
    owners: Mapping[int, list[str]],
    names: Mapping[int, str],
) -> None:
    """Register the slots of one MultiheadAttention as layers, and its ``Spec``."""
    prefix = f"{mname}." if mname else ""
    layers: set[str] = set()
    for slot in _attention.slot_names(module):
        weight, rows, offset = _attention.slot_rows(module, slot)
        local: dict[str, str] = {}
        parts: dict[str, tuple[int, int]] = {}
        for pname, attr, span in (
            ("weight", weight, rows),
            ("bias", "in_proj_bias", (offset, offset + rows[1] - rows[0])),
        ):
            p = module._parameters.get(attr)
            if p is None or not p.requires_grad or len(owners[id(p)]) != 1:
                continue
            local[pname] = names[id(p)]
            if span != (0, p.shape[0]):
                parts[pname] = span
        if local:
            name = _attention.slot_layer(mname, slot)
            ctx.layers[name] = CapturedLayer(module, "outer", local, parts, hooked=False)
            layers.add(name)
    if f"{prefix}out_proj" in ctx.layers:
        layers.add(f"{prefix}out_proj")
    spec = _attention.make_spec(mname, module, ctx.params, frozenset(layers))
    first = spec.tensors["in_proj_weight" if module._qkv_same_embed_dim else "q_proj_weight"]
    if layers and first is not None:
        ctx.attention[id(first)] = spec


@contextmanager
def capture(ctx: Context, records: list[Record]) -> Iterator[None]:
    """Record every call of a module with a rule while the block runs; remove the hooks after."""
    handles = []

    def hook_for(name: str) -> Callable[[nn.Module, tuple[object, ...], object], object]:
        def hook(module: nn.Module, args: tuple[object, ...], output: object) -> object:
            x = args[0] if args else None
            if not isinstance(output, Tensor) or not isinstance(x, Tensor):
                return None
            records.append(Record(name, x, output, output._version))
            return output.clone() if name in ctx.clone_output else None

        return hook

    try:
        for name, layer in ctx.layers.items():
            if layer.hooked:
                handles.append(layer.module.register_forward_hook(hook_for(name)))
        yield
    finally:
        for h in handles:
            h.remove()


def call_model(ctx: Context, x: Tensor, records: list[Record], *, probe: bool = False) -> object:
    """The model on ``x`` with the private leaves; MultiheadAttention calls record their
    projections into ``records`` (``_attention``; the probe gets torch's own attention)."""
    if not ctx.attention:
        return functional_call(ctx.model, (ctx.params, ctx.buffers), (x,))

    def record(name: str, a: Tensor, z: Tensor) -> None:
        records.append(Record(name, a, z, z._version))

    with _attention.Attention(ctx.attention, record, probe=probe):
        return functional_call(ctx.model, (ctx.params, ctx.buffers), (x,))


def sample_losses(ctx: Context, out: object, targets: tuple[Tensor, ...], size: int) -> Tensor:
    """Each sample's loss, ``loss_fn`` evaluated on a batch of one, for all samples at once."""
    api = ctx.api
    out = check_output(api, out)
    if out.dim() == 0 or out.shape[0] != size:
        raise ShapeError(
            message(
                api,
                f"the model's output must keep the batch dimension {size} first",
                f"shape {tuple(out.shape)}",
                "Return one row per sample.",
            )
        )

    def one(o: Tensor, *t: Tensor) -> Tensor:
        loss = check_output(api, ctx.loss_fn(o.unsqueeze(0), *(ti.unsqueeze(0) for ti in t)))
        return scalar_loss(api, loss)

    try:
        with quiet_vmap(), typed_random_errors(api):
            losses: Tensor = vmap(one)(out, *targets)
    except NonFunctionalModuleError:
        raise
    except RuntimeError as e:
        raise UnsupportedOperationError(
            message(
                api,
                "loss_fn must run under torch.func.vmap (one sample at a time)",
                f"the error {str(e).splitlines()[0]!r}",
                "Avoid .item(), in-place ops and data-dependent Python control flow.",
            )
        ) from e
    return losses


def forward(ctx: Context, batch: tuple[Tensor, ...]) -> tuple[Tensor, Tensor, list[Record]]:
    """The batched forward with capture: model output, per-sample losses, recorded calls."""
    records: list[Record] = []
    with torch.enable_grad(), capture(ctx, records):
        out = call_model(ctx, batch[0], records)
        losses = sample_losses(ctx, out, batch[1:], batch[0].shape[0])
    return check_output(ctx.api, out), losses, records


def probe(ctx: Context, batch: tuple[Tensor, ...]) -> tuple[Tensor, list[Record]]:
    """The model on sample 0 alone, no graph: the reference for the batched pass's checks."""
    records: list[Record] = []
    # under the guard: a random draw in the model would make the probe and the batch disagree
    # by chance, so it is refused here, whichever way the comparison would fall
    with torch.no_grad(), capture(ctx, records), typed_random_errors(ctx.api), guard(ctx.api):
        out = call_model(ctx, batch[0][:1], records, probe=True)
    out = check_output(ctx.api, out)
    ctx.clone_output = {r.name for r in records if r.output._version != r.version}
    return out, records


def _local_nodes(record: Record) -> set[Node]:
    """Autograd nodes created inside one module call: reachable from its output, not its input."""
    stop = record.x.grad_fn
    root = record.output.grad_fn
    seen: set[Node] = set()
    stack = [root] if root is not None else []
    while stack:
        node = stack.pop()
        if node in seen or node is stop:
            continue
        seen.add(node)
        stack.extend(n for n, _ in node.next_functions if n is not None)
    return seen


def _consumers(root: Node | None) -> dict[Node, list[Node]]:
    """For every node of the graph under ``root``, the nodes that feed gradient into it."""
    parents: dict[Node, list[Node]] = {}
    stack = [root] if root is not None else []
    seen: set[Node] = set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for nxt, _ in node.next_functions:
            if nxt is not None:
                parents.setdefault(nxt, []).append(node)
                stack.append(nxt)
    return parents


def covered_layers(
    ctx: Context,
    size: int,
    ref: tuple[Tensor, list[Record]],
    out: Tensor,
    losses: Tensor,
    records: list[Record],
) -> dict[str, list[Record]] | None:
    """The modules whose parameters the batched pass handles, each with its calls (see top);
    None when the model mixes samples, so that the batched graph is no per-sample graph."""
    ref_out, ref_records = ref
    eps = torch.finfo(out.dtype).eps if out.is_floating_point() else 0.0
    scale = max(1.0, float(ref_out.abs().max())) if ref_out.numel() else 1.0
    if ref_out.shape != out[:1].shape or not torch.allclose(
        ref_out, out[:1].detach(), rtol=0.0, atol=eps**0.5 * scale
    ):
        return None  # the model mixes samples: nothing is safe to read off the batched pass
    calls: dict[str, list[Record]] = {}
    for r in records:
        calls.setdefault(r.name, []).append(r)
    ref_calls: dict[str, list[Record]] = {}
    for r in ref_records:
        ref_calls.setdefault(r.name, []).append(r)
    parents = _consumers(losses.grad_fn)
    candidates: dict[str, list[Record]] = {}
    for name, recs in calls.items():
        layer = ctx.layers[name]
        module, kind = layer.module, layer.kind
        refs = ref_calls.get(name, [])
        if kind == "conv" and len(recs) > 1:
            continue
        if len(refs) != len(recs) or not all(
            _layers.input_rank_ok(module, r.x) and r.output._version == r.version for r in recs
        ):
            continue
        dims = [_batch_dim(layer, r, q, size) for r, q in zip(recs, refs, strict=True)]
        if any(d is None for d in dims):
            continue
        for r, d in zip(recs, dims, strict=True):
            r.batch_dim = d or 0
        candidates[name] = recs
    return _whole_parameters(ctx, candidates, parents)


def _batch_dim(layer: CapturedLayer, r: Record, q: Record, size: int) -> int | None:
    """The dimension of a call's input and output that holds the ``size`` samples: the one
    where the probe's call has 1 and every other size is the same. Dimension 1 (sequence
    first) only for layers that act on the last dimensions (Linear, Embedding, LayerNorm)."""
    acts_on_last = layer.kind in ("outer", "embed") or (
        layer.kind == "diag" and not isinstance(layer.module, nn.GroupNorm)
    )
    for d in (0, 1) if acts_on_last else (0,):
        if all(
            t.dim() > d
            and t.shape[d] == size
            and u.shape[d] == 1
            and t.dim() == u.dim()
            and all(a == b for i, (a, b) in enumerate(zip(t.shape, u.shape, strict=True)) if i != d)
            for t, u in ((r.x, q.x), (r.output, q.output))
        ):
            if (
                d == 1
                and layer.kind == "diag"
                and r.x.dim() - 2 < len(getattr(layer.module, "normalized_shape", ()))
            ):
                return None  # dimension 1 is normalised, not a sample dimension
            return d
    return None


def _whole_parameters(
    ctx: Context, candidates: dict[str, list[Record]], parents: dict[Node, list[Node]]
) -> dict[str, list[Record]]:
    """The candidate layers whose parameters are used only inside their calls, where the layers
    that share a parameter own disjoint rows of it; a layer dropped drops the others sharing
    one of its parameters (the parameter then falls back as a whole)."""
    local = {
        name: set().union(*(_local_nodes(r) for r in recs)) for name, recs in candidates.items()
    }
    alive = dict(candidates)
    while True:
        users: dict[str, list[str]] = {}
        for name in alive:
            for p in ctx.layers[name].params.values():
                users.setdefault(p, []).append(name)
        bad: set[str] = set()
        for p, names in users.items():
            inside: set[Node] = set().union(*(local[n] for n in names))
            spans = sorted(
                ctx.layers[n].rows.get(_local_name(ctx.layers[n], p), (0, ctx.params[p].shape[0]))
                for n in names
            )
            overlap = any(a[1] > b[0] for a, b in itertools.pairwise(spans))
            if overlap or not set(parents.get(get_gradient_edge(ctx.params[p]).node, [])) <= inside:
                bad.update(names)
        if not bad:
            return alive
        for name in bad:
            alive.pop(name, None)


def _local_name(layer: CapturedLayer, param: str) -> str:
    """The layer's local name (``"weight"``/``"bias"``) of the model's parameter ``param``."""
    return next(k for k, v in layer.params.items() if v == param)


def layer_factors(
    ctx: Context, covered: dict[str, list[Record]], total: Tensor, *, retain_graph: bool
) -> dict[str, _layers.Factors]:
    """One backward of ``total`` to the covered calls' outputs, reduced to canonical forms."""
    flat = [r for recs in covered.values() for r in recs]
    if not flat:
        return {}
    deltas = torch.autograd.grad(
        total, [r.output for r in flat], retain_graph=retain_graph, allow_unused=True
    )
    result: dict[str, _layers.Factors] = {}
    i = 0
    for name, recs in covered.items():
        layer = ctx.layers[name]
        parts = []
        for r in recs:
            d = deltas[i]
            i += 1
            d = torch.zeros_like(r.output) if d is None else d
            x, d = r.x.detach(), d.detach()
            if r.batch_dim:
                x, d = x.transpose(0, r.batch_dim), d.transpose(0, r.batch_dim)
            parts.append(_layers.factors(layer.module, layer.kind, x, d))
        result[name] = _layers.concat(parts)
    return result


def covered_params(ctx: Context, covered: dict[str, list[Record]]) -> set[str]:
    """Names of the parameters the batched pass handles."""
    return {p for name in covered for p in ctx.layers[name].params.values()}


@dataclass(frozen=True)
class Pass:
    """One captured batched forward and backward over ``size`` samples from ``start``."""

    start: int
    size: int
    forms: dict[str, _layers.Factors]
    """Covered module name -> its canonical form (``_layers``) for these samples."""
    losses: Tensor
    """The per-sample losses, still attached to the graph (for a further backward)."""
    covered: dict[str, list[Record]]
    """The modules the batched pass covers, with the first pass's calls."""
    mixes: bool = False
    """The model mixes samples: nothing may be read off the batched graph (``forms`` is empty
    and no further pass follows)."""


def passes(
    ctx: Context, batch: tuple[Tensor, ...], step: int, *, retain_graph: bool = False
) -> Iterator[Pass]:
    """The batched passes of ``per_sample_grads``, the ghost norms and the clipped sum: ``step``
    samples at a time, each one forward with capture and one backward to the covered layers'
    outputs, reduced to canonical forms.

    The first pass decides which modules are covered (``covered_layers``, against a probe of
    sample 0); later ones must call them the same way (``regroup``). A model that mixes samples
    yields one ``Pass`` with ``mixes=True`` and stops. A model without any layer rule is not
    probed: every pass covers nothing.
    """
    size = batch[0].shape[0]
    ref = probe(ctx, batch) if ctx.layers else None
    covered: dict[str, list[Record]] | None = None
    for start in range(0, size, step):
        part = tuple(b[start : start + step] for b in batch)
        n = part[0].shape[0]
        out, losses, records = forward(ctx, part)
        if covered is None:
            found = {} if ref is None else covered_layers(ctx, n, ref, out, losses, records)
            if found is None:
                yield Pass(start, n, {}, losses, {}, mixes=True)
                return
            covered = calls = found
        else:
            calls = regroup(ctx, covered, records, n)
        forms = layer_factors(ctx, calls, losses.sum(), retain_graph=retain_graph)
        yield Pass(start, n, forms, losses, covered)


def vmap_grads(
    ctx: Context, names: list[str], batch: tuple[Tensor, ...], chunk_size: int | None
) -> dict[str, Tensor]:
    """The fallback: ``vmap(grad(functional_call))`` for the parameters in ``names`` only."""
    if not names:
        return {}
    api = ctx.api
    fixed = {k: v.detach() for k, v in ctx.params.items() if k not in names}
    wanted = {k: ctx.params[k].detach() for k in names}

    def sample_loss(p: dict[str, Tensor], *sample: Tensor) -> Tensor:
        one = [s.unsqueeze(0) for s in sample]
        out = functional_call(ctx.model, ({**fixed, **p}, ctx.buffers), (one[0],))
        loss = check_output(api, ctx.loss_fn(out, *one[1:]))
        return scalar_loss(api, loss)

    in_dims = (None,) + (0,) * len(batch)
    with torch.enable_grad(), quiet_vmap(), typed_random_errors(api):
        result: dict[str, Tensor] = vmap(grad(sample_loss), in_dims=in_dims, chunk_size=chunk_size)(
            wanted, *batch
        )
    return result


def regroup(
    ctx: Context, first: dict[str, list[Record]], records: list[Record], size: int
) -> dict[str, list[Record]]:
    """A later chunk's calls of the covered modules, checked against the first chunk's."""
    calls: dict[str, list[Record]] = {name: [] for name in first}
    for r in records:
        if r.name in calls:
            calls[r.name].append(r)
    for name, recs in calls.items():
        for r, f in zip(recs, first[name], strict=False):
            r.batch_dim = f.batch_dim
        if len(recs) != len(first[name]) or any(
            r.x.dim() <= f.batch_dim
            or r.x.shape[f.batch_dim] != size
            or r.output.shape[f.batch_dim] != size
            for r, f in zip(recs, first[name], strict=False)
        ):
            raise UnsupportedOperationError(
                message(
                    ctx.api,
                    "every chunk of the batch must call the layers the same way",
                    f"a different call pattern of {name!r} in a later chunk",
                    "Use chunk_size=None, or make the model's control flow batch-independent.",
                )
            )
    return calls


def scalar_loss(api: str, loss: Tensor) -> Tensor:
    """One sample's loss as a 0-d tensor; a ``ShapeError`` if ``loss_fn`` gave several numbers."""
    if loss.numel() != 1:
        raise ShapeError(
            message(
                api,
                "loss_fn must return a single number per sample",
                f"shape {tuple(loss.shape)}",
                "Use reduction='sum' or 'mean'.",
            )
        )
    return loss.reshape(())
