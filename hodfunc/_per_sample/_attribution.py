"""Data attribution: random projections of per-sample gradients and their inner products.

``per_sample_grad_projections`` and ``per_sample_grad_dots`` read each covered layer's form off
the batched passes (``_capture``) and reduce it with ``_sketch``; parameters without a rule
fall back to ``vmap(grad)``, chunk by chunk, whose gradients are projected or multiplied.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .._errors import ArgumentError, ArgumentTypeError, message
from .._validate import check_chunk_size
from . import _capture, _layers, _sketch
from ._capture import LossFn
from ._grads import check_batch, check_functional_module
from ._norms import _dtype
from ._sketch import ProjectionKind


def _check_projection(api: str, dim: object, kind: object, seed: object) -> None:
    """Raise unless ``dim`` is an int >= 1, ``kind`` one of the kinds and ``seed`` an int."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ArgumentError(
            message(api, "dim must be an int >= 1", repr(dim), "Use e.g. dim=1024 (32 x 32).")
        )
    if kind not in _sketch.KINDS:
        raise ArgumentError(
            message(
                api,
                f"kind must be one of {', '.join(map(repr, _sketch.KINDS))}",
                repr(kind),
                'Use kind="kronecker" for the fast factored projection of Linear layers.',
            )
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ArgumentTypeError(message(api, "seed must be an int", repr(seed), "Use e.g. seed=0."))


def projection_matrix(
    name: str,
    shape: Sequence[int],
    *,
    dim: int,
    kind: ProjectionKind = "gaussian",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The matrix ``R (dim, prod(shape))`` that ``per_sample_grad_projections`` applies to the
    flattened gradient of parameter ``name`` (on the CPU).

    It is a function of ``(seed, name, shape)`` (and ``dim``, ``kind``) alone, the same on every
    call, chunk and device. Each random stream comes from
    ``torch.Generator().manual_seed(s)`` with ``s`` the first 8 bytes (little-endian, 63 bits)
    of the BLAKE2b digest of ``f"{seed}|{name}|{tuple(shape)}|{what}"``:

    - ``"gaussian"``: row ``k`` is ``torch.randn(n) / sqrt(dim)`` from ``what = f"gaussian:{k}"``;
    - ``"rademacher"``: row ``k`` is ``(2 b - 1) / sqrt(dim)`` from ``f"rademacher:{k}"``, with
      ``b`` the bits (least significant first) of ``torch.randint(0, 256, (ceil(n / 8),),
      dtype=torch.uint8)``;
    - ``"kronecker"``: for a parameter of 2 or more dimensions ``P_out kron P_in``, with
      ``P_out = randn(m_out, shape[0]) / sqrt(m_out)`` (``"kronecker:out"``) and
      ``P_in = randn(m_in, prod(shape[1:])) / sqrt(m_in)`` (``"kronecker:in"``), where
      ``m_out`` is the largest divisor of ``dim`` not above ``sqrt(dim)`` and
      ``m_in = dim / m_out``; a vector gets the ``"gaussian"`` matrix.

    Every kind has ``E[R^T R] = I``, so ``E[<R g, R h>] = <g, h>``.

    Args:
        name: the parameter's name in the model (``model.named_parameters()``).
        shape: the parameter's shape.
        dim: the projection's dimension.
        kind: ``"gaussian"``, ``"rademacher"`` or ``"kronecker"``.
        seed: the seed.
        dtype: the result's dtype. The random numbers are float32 draws; the Kronecker
            product of the two factors is formed in ``dtype`` (as the projection forms it in
            the parameters' dtype).

    Returns:
        A CPU tensor of shape ``(dim, prod(shape))``.

    Example:
        >>> import hodfunc
        >>> r = hodfunc.projection_matrix("0.weight", (3, 4), dim=4, kind="kronecker", seed=1)
        >>> r.shape
        torch.Size([4, 12])
        >>> bool((r == hodfunc.projection_matrix("0.weight", (3, 4), dim=4, kind="kronecker",
        ...                                      seed=1)).all())
        True
    """
    api = "hodfunc.projection_matrix"
    _check_projection(api, dim, kind, seed)
    shape = tuple(int(s) for s in shape)
    if kind == "kronecker" and len(shape) >= 2:
        p_out, p_in = _sketch.kron_factors(seed, name, shape, dim)
        return torch.kron(p_out.to(dtype), p_in.to(dtype))
    dense: ProjectionKind = "gaussian" if kind == "kronecker" else kind
    return _sketch.dense_rows(dense, seed, name, shape, dim, range(dim)).to(dtype)


def _cols(layer: _capture.CapturedLayer, local: str, shape: tuple[int, ...]) -> slice:
    """The flattened entries of the parameter that ``layer`` owns (all, or a slot's rows)."""
    rows = layer.rows.get(local)
    if rows is None:
        return slice(0, math.prod(shape))
    per_row = math.prod(shape[1:])
    return slice(rows[0] * per_row, rows[1] * per_row)


def _project_layer(
    ctx: _capture.Context, layer: _capture.CapturedLayer, f: _layers.Factors, p: _sketch.Projector
) -> Tensor:
    """``R g_i`` over the layer's weight and bias."""
    total = f.d.new_zeros(f.d.shape[0], p.dim)
    w, b = layer.param("weight"), layer.param("bias")
    if w is not None:
        shape = tuple(ctx.params[w].shape)
        total += _sketch.project_weight(f, p, w, shape, _cols(layer, "weight", shape))
    if b is not None:
        shape = tuple(ctx.params[b].shape)
        total += p.dense(_sketch.bias_grads(f), b, shape, _cols(layer, "bias", shape))
    return total


def per_sample_grad_projections(
    model: nn.Module,
    loss_fn: LossFn,
    *batch: Tensor,
    dim: int,
    kind: ProjectionKind = "gaussian",
    seed: int = 0,
    chunk_size: int | None = None,
) -> Tensor:
    """A Johnson-Lindenstrauss projection of each sample's whole gradient (TRAK, LoGra).

    ``result[i] = sum_p R_p g_{i,p}`` over the trainable parameters ``p``, with ``g_{i,p}`` the
    flattened ``d loss_i / d p`` of ``hodfunc.per_sample_grads`` and ``R_p`` the matrix
    ``hodfunc.projection_matrix(name, p.shape, dim=dim, kind=kind, seed=seed)`` (a function of
    the seed, the parameter's name and shape only). Layers with a rule never materialize their
    per-sample gradients where a factored form exists: a Linear layer on vectors gives
    ``(R_k a_i) . delta_i``; with ``kind="kronecker"`` a Linear (or attention projection) on
    sequences gives ``sum_t (P_out delta_it)(P_in a_it)^T`` (LoGra), an Embedding the rows of
    ``P_out`` its indices pick. Elsewhere (sequences with a dense kind, convolutions,
    normalisation layers, biases) per-sample gradients of a bounded number of samples are
    projected; parameters without a rule fall back to ``vmap(grad)``, ``chunk_size`` samples at
    a time.

    The dense kinds cost one draw per entry of ``R`` (``dim x P`` numbers) and as many
    multiply-adds per sample: use them where ``R`` must be dense, ``"kronecker"`` where speed
    matters.

    Args:
        model: the module; BatchNorm layers must be in eval mode.
        loss_fn: ``loss_fn(output, *targets)`` returning one number for a batch of one.
        *batch: the model input first, then the loss's extra tensors, all with leading size B.
        dim: the projection's dimension (for ``"kronecker"`` best a square or a power of 2).
        kind: ``"gaussian"``, ``"rademacher"`` or ``"kronecker"``.
        seed: the seed of ``hodfunc.projection_matrix``.
        chunk_size: samples per batched pass; peak memory is one batched forward and backward
            of ``chunk_size`` samples plus transient buffers of at most 1M elements.

    Returns:
        A tensor of shape ``(B, dim)``.

    Raises:
        ArgumentError: a bad ``dim``, ``kind`` or ``chunk_size``.
        NonFunctionalModuleError: a BatchNorm layer is in training mode.
        ShapeError: the batch tensors disagree in batch size.

    Example:
        >>> import torch, hodfunc
        >>> model = torch.nn.Linear(3, 2)
        >>> x, y = torch.randn(5, 3), torch.randn(5, 2)
        >>> mse = torch.nn.functional.mse_loss
        >>> proj = hodfunc.per_sample_grad_projections(model, mse, x, y, dim=4, kind="kronecker")
        >>> proj.shape
        torch.Size([5, 4])
        >>> grads = hodfunc.per_sample_grads(model, mse, x, y)
        >>> want = sum(g.flatten(1) @ hodfunc.projection_matrix(k, g.shape[1:], dim=4,
        ...                                                     kind="kronecker").T
        ...            for k, g in grads.items())
        >>> torch.allclose(proj, want, atol=1e-5)
        True
    """
    api = "hodfunc.per_sample_grad_projections"
    _check_projection(api, dim, kind, seed)
    chunk = check_chunk_size(api, chunk_size)
    check_functional_module(api, model, loss_fn)
    size = check_batch(api, batch)
    ctx = _capture.make_context(api, model, loss_fn)
    dtype = _dtype(ctx, batch)
    device = next(iter(ctx.params.values())).device if ctx.params else batch[0].device
    p = _sketch.Projector(kind, dim, seed, dtype, device)
    step = chunk or size
    total = torch.zeros(size, dim, dtype=dtype, device=device)
    done: set[str] = set()
    with torch.random.fork_rng(devices=[]):
        if ctx.layers:
            for part in _capture.passes(ctx, batch, step):
                if part.mixes or not part.covered:
                    break
                done = _capture.covered_params(ctx, part.covered)
                rows = slice(part.start, part.start + part.size)
                for name, f in part.forms.items():
                    total[rows] += _project_layer(ctx, ctx.layers[name], f, p)
        rest = [k for k in ctx.params if k not in done]
        for s in range(0, size, step) if rest else ():
            part_batch = tuple(b[s : s + step] for b in batch)
            for k, g in _capture.vmap_grads(ctx, rest, part_batch, None).items():
                shape = tuple(ctx.params[k].shape)
                flat = g.detach().reshape(g.shape[0], -1)
                total[s : s + g.shape[0]] += p.dense(flat, k, shape, slice(0, flat.shape[1]))
    return total


def _stored_passes(
    ctx: _capture.Context, batch: tuple[Tensor, ...], step: int
) -> tuple[list[_capture.Pass], set[str]]:
    """Every batched pass over ``batch`` (their forms kept, graphs freed) and the parameters
    they cover."""
    kept: list[_capture.Pass] = []
    done: set[str] = set()
    if not ctx.layers:
        return kept, done
    for part in _capture.passes(ctx, batch, step):
        if part.mixes or not part.covered:
            return [], set()
        done = _capture.covered_params(ctx, part.covered)
        kept.append(part)
    return kept, done


def _flat_fallback(
    ctx: _capture.Context, names: list[str], batch: tuple[Tensor, ...], start: int, stop: int
) -> Tensor:
    """The fallback parameters' per-sample gradients of samples ``start:stop``, flattened."""
    part = tuple(b[start:stop] for b in batch)
    grads = _capture.vmap_grads(ctx, names, part, None)
    return torch.cat([grads[k].detach().reshape(stop - start, -1) for k in names], dim=1)


def per_sample_grad_dots(
    model: nn.Module,
    loss_fn: LossFn,
    batch_a: tuple[Tensor, ...],
    batch_b: tuple[Tensor, ...] | None = None,
    *,
    chunk_size: int | None = None,
) -> Tensor:
    """Inner products ``<g_i, h_j>`` of the per-sample gradients of two batches (TracIn, gradient
    similarity), without materializing them.

    ``result[i, j] = sum_p <d loss_i / d p, d loss'_j / d p>`` over the trainable parameters,
    with ``loss_i`` from ``batch_a`` and ``loss'_j`` from ``batch_b`` as in
    ``hodfunc.per_sample_grads``. A Linear layer on vectors contributes
    ``(a_i . a'_j)(delta_i . delta'_j)``; on sequences the Gram form
    ``sum_{t,s} (a_it . a'_js)(delta_it . delta'_js)`` or per-sample gradients of a bounded
    number of samples, whichever costs fewer flops; parameters without a rule fall back to
    ``vmap(grad)``. With ``batch_b=None`` the result is the Gram matrix of ``batch_a``.

    Args:
        model: the module; BatchNorm layers must be in eval mode.
        loss_fn: ``loss_fn(output, *targets)`` returning one number for a batch of one.
        batch_a: ``(inputs, *targets)`` with leading size ``B_a``.
        batch_b: ``(inputs, *targets)`` with leading size ``B_b``, or None for ``batch_a``.
        chunk_size: samples per batched pass. The layers' inputs and output gradients of both
            batches are kept (not their per-sample gradients), plus transient buffers of at most
            1M elements; the fallback parameters' per-sample gradients of ``batch_b`` are
            materialized.

    Returns:
        A tensor of shape ``(B_a, B_b)``.

    Raises:
        ArgumentError: a bad ``chunk_size``.
        ArgumentTypeError: a batch that is not a tuple of tensors.
        NonFunctionalModuleError: a BatchNorm layer is in training mode.
        ShapeError: the tensors of one batch disagree in batch size.

    Example:
        >>> import torch, hodfunc
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> _ = model.weight.data.fill_(1.0)
        >>> x, y = torch.tensor([[3.0, 4.0], [0.0, 1.0]]), torch.zeros(2, 1)
        >>> # gradients (42, 56) and (0, 2)
        >>> hodfunc.per_sample_grad_dots(model, torch.nn.functional.mse_loss, (x, y)).tolist()
        [[4900.0, 112.0], [112.0, 4.0]]
    """
    api = "hodfunc.per_sample_grad_dots"
    chunk = check_chunk_size(api, chunk_size)
    check_functional_module(api, model, loss_fn)
    for which, b in (("batch_a", batch_a), ("batch_b", batch_b)):
        if b is not None and not isinstance(b, tuple):
            raise ArgumentTypeError(
                message(
                    api,
                    f"{which} must be a tuple (inputs, *targets)",
                    type(b).__name__,
                    "Pass e.g. batch_a=(x, y).",
                )
            )
    size_a = check_batch(api, batch_a)
    same = batch_b is None
    b_batch = batch_a if batch_b is None else batch_b
    size_b = size_a if same else check_batch(api, b_batch)
    ctx = _capture.make_context(api, model, loss_fn)
    dtype = _dtype(ctx, batch_a)
    total = batch_a[0].new_zeros(size_a, size_b, dtype=dtype)
    with torch.random.fork_rng(devices=[]):
        kept_a, done_a = _stored_passes(ctx, batch_a, chunk or size_a)
        kept_b, done_b = (kept_a, done_a) if same else _stored_passes(ctx, b_batch, chunk or size_b)
        done = done_a & done_b
        for pa in kept_a:
            for pb in kept_b:
                block = total[pa.start : pa.start + pa.size, pb.start : pb.start + pb.size]
                for name, fa in pa.forms.items():
                    layer = ctx.layers[name]
                    fb = pb.forms.get(name)
                    if fb is None or not set(layer.params.values()) <= done:
                        continue
                    if layer.param("weight") is not None:
                        block += _sketch.dot_weight(fa, fb)
                    if layer.param("bias") is not None:
                        block += _sketch.bias_grads(fa) @ _sketch.bias_grads(fb).t()
        rest = [k for k in ctx.params if k not in done]
        if rest:
            step = chunk or size_a
            flat_b = _flat_fallback(ctx, rest, b_batch, 0, size_b)
            for s in range(0, size_a, step):
                stop = min(size_a, s + step)
                flat_a = flat_b[s:stop] if same else _flat_fallback(ctx, rest, batch_a, s, stop)
                total[s:stop] += flat_a @ flat_b.t()
    return total
