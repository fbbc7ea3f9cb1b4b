"""Dot products and random projections of per-sample gradients, read off canonical forms.

For one layer's form (``_layers``) with ``B`` samples, without the ``(B, P)`` per-sample
gradients where a factored form exists:

- dot products ``<g_i, h_j>`` between two batches' forms: for ``outer`` with one position
  ``(a_i . a'_j)(d_i . d'_j)``, with ``T`` positions the Gram form
  ``sum_{t,s} (a_it . a'_js)(d_it . d'_js)``, for ``embed`` the same with ``[v_it = v'_js]`` for
  ``a_it . a'_js``; otherwise (or when the Gram form costs more) per-sample gradients of a
  bounded number of samples at a time, multiplied;
- projections ``R g_i`` with the matrix of ``projection_matrix`` (documented there): for
  ``outer`` with one position ``(R_k a_i) . d_i`` row block by row block, for ``embed`` the
  rows of ``R_k`` the indices pick, for ``kronecker`` ``(P_d d_it)(P_a a_it)^T`` summed over
  ``t`` (LoGra); otherwise per-sample gradients of a bounded number of samples, projected.

Transient buffers stay under ``BUDGET`` elements (plus one row of ``R`` where a parameter is
larger).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from typing import Literal

import torch
from torch import Tensor

from . import _layers

ProjectionKind = Literal["gaussian", "rademacher", "kronecker"]
KINDS: tuple[ProjectionKind, ...] = ("gaussian", "rademacher", "kronecker")
BUDGET = 1 << 20
"""Elements of one transient buffer (a block of ``R``, a chunk of per-sample gradients)."""


def stream_seed(seed: int, name: str, shape: tuple[int, ...], what: str) -> int:
    """The seed of one random stream: the first 8 bytes (little-endian) of the BLAKE2b digest
    of ``f"{seed}|{name}|{shape}|{what}"``, masked to 63 bits."""
    text = f"{seed}|{name}|{tuple(shape)}|{what}".encode()
    digest = hashlib.blake2b(text, digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def kron_dims(dim: int) -> tuple[int, int]:
    """``(m_out, m_in)`` with ``m_out * m_in = dim``: ``m_out`` the largest divisor of ``dim``
    not above its square root (32 x 32 for 1024, 16 x 32 for 512)."""
    m = math.isqrt(dim)
    while dim % m:
        m -= 1
    return m, dim // m


def _generator(seed: int, name: str, shape: tuple[int, ...], what: str) -> torch.Generator:
    return torch.Generator().manual_seed(stream_seed(seed, name, shape, what))


def dense_rows(
    kind: ProjectionKind, seed: int, name: str, shape: tuple[int, ...], dim: int, rows: range
) -> Tensor:
    """Rows ``rows`` of the dense matrix ``(dim, prod(shape))`` of ``kind`` ("gaussian" or
    "rademacher"), float32 on the CPU, divided by ``sqrt(dim)``. Row ``k`` is drawn from
    ``torch.Generator().manual_seed(stream_seed(seed, name, shape, f"{kind}:{k}"))``: as
    ``torch.randn(n)``, or for rademacher as ``2 b - 1`` with ``b`` the bits, least significant
    first, of ``torch.randint(0, 256, (ceil(n / 8),), dtype=torch.uint8)`` (eight signs per
    draw)."""
    n = math.prod(shape)
    out = torch.empty(len(rows), n)
    shifts = torch.arange(8, dtype=torch.uint8)
    for i, k in enumerate(rows):
        g = _generator(seed, name, shape, f"{kind}:{k}")
        if kind == "rademacher":
            words = torch.randint(0, 256, ((n + 7) // 8,), dtype=torch.uint8, generator=g)
            bits = (words.unsqueeze(1) >> shifts).bitwise_and_(1).reshape(-1)[:n]
            out[i].copy_(bits).mul_(2.0).sub_(1.0)
        else:
            torch.randn(n, generator=g, out=out[i])
    return out.div_(math.sqrt(dim))


def kron_factors(seed: int, name: str, shape: tuple[int, ...], dim: int) -> tuple[Tensor, Tensor]:
    """``P_out (m_out, shape[0])`` and ``P_in (m_in, prod(shape[1:]))``, float32 on the CPU:
    ``torch.randn`` from the streams ``"kronecker:out"`` and ``"kronecker:in"``, divided by
    ``sqrt(m_out)`` and ``sqrt(m_in)``."""
    m_out, m_in = kron_dims(dim)
    rest = math.prod(shape[1:])
    p_out = torch.randn(m_out, shape[0], generator=_generator(seed, name, shape, "kronecker:out"))
    p_in = torch.randn(m_in, rest, generator=_generator(seed, name, shape, "kronecker:in"))
    return p_out / math.sqrt(m_out), p_in / math.sqrt(m_in)


class Projector:
    """One call's projection: kind, dimension and seed, the dtype and device of the results,
    and the matrices small enough to keep between the chunks of a batch."""

    def __init__(
        self, kind: ProjectionKind, dim: int, seed: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        self.kind, self.dim, self.seed = kind, dim, seed
        self.dtype, self.device = dtype, device
        self._kept: dict[tuple[str, int], Tensor] = {}
        self._factors: dict[str, tuple[Tensor, Tensor]] = {}

    def kronecker(self, shape: tuple[int, ...]) -> bool:
        """Whether a parameter of this shape gets the Kronecker-factored matrix."""
        return self.kind == "kronecker" and len(shape) >= 2

    def factors(self, name: str, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
        """The Kronecker factors of parameter ``name``, in the results' dtype and device."""
        if name not in self._factors:
            p_out, p_in = kron_factors(self.seed, name, shape, self.dim)
            self._factors[name] = (
                p_out.to(self.device, self.dtype),
                p_in.to(self.device, self.dtype),
            )
        return self._factors[name]

    def blocks(self, name: str, shape: tuple[int, ...]) -> Iterator[tuple[slice, Tensor]]:
        """The dense matrix of parameter ``name`` as row blocks ``(rows, R[rows])``."""
        kind: ProjectionKind = "gaussian" if self.kind == "kronecker" else self.kind
        n = math.prod(shape)
        step = max(1, BUDGET // max(n, 1))
        for start in range(0, self.dim, step):
            stop = min(self.dim, start + step)
            key = (name, start)
            block = self._kept.get(key)
            if block is None:
                block = dense_rows(kind, self.seed, name, shape, self.dim, range(start, stop))
                block = block.to(self.device, self.dtype)
                if self.dim * n <= BUDGET:  # the whole matrix is small: keep it for later chunks
                    self._kept[key] = block
            yield slice(start, stop), block

    def dense(self, g: Tensor, name: str, shape: tuple[int, ...], cols: slice) -> Tensor:
        """``g (n, c) @ R[:, cols].T``: the projection of gradients that own columns ``cols``
        of parameter ``name``'s flattened entries."""
        if self.kronecker(shape):
            p_out, p_in = self.factors(name, shape)
            rest = math.prod(shape[1:])
            rows = slice(cols.start // rest, cols.stop // rest)
            g3 = g.reshape(g.shape[0], -1, rest)
            return torch.einsum("io,boc,jc->bij", p_out[:, rows], g3, p_in).reshape(g.shape[0], -1)
        out = g.new_empty(g.shape[0], self.dim)
        for rows, block in self.blocks(name, shape):
            torch.mm(g, block[:, cols].t(), out=out[:, rows])
        return out


def _slices(f: _layers.Factors, step: int) -> Iterator[tuple[int, _layers.Factors]]:
    """``f`` over ``step`` samples at a time."""
    b = f.d.shape[0]
    for s in range(0, b, step):
        yield s, _layers.Factors(f.kind, f.a[s : s + step], f.d[s : s + step], f.size, f.conv)


def weight_shape(f: _layers.Factors) -> tuple[int, ...]:
    """The flattened per-sample weight gradient's shape one form writes (``_layers.write``)."""
    if f.kind == "outer":
        return (f.d.shape[2], f.a.shape[2])
    if f.kind == "diag":
        return (f.d.shape[2],)
    if f.kind == "embed":
        return (f.size, f.d.shape[2])
    assert f.conv is not None
    return (f.d.shape[1], f.a.shape[1] * math.prod(f.conv.kernel))


def bias_grads(f: _layers.Factors) -> Tensor:
    """Per-sample bias gradients ``(B, O)``: the output gradient summed over positions."""
    d = f.d
    if f.kind == "conv":
        return d.reshape(d.shape[0], d.shape[1], -1).sum(2)
    return d.sum(1)


def weight_chunks(f: _layers.Factors) -> Iterator[tuple[int, Tensor]]:
    """Per-sample weight gradients ``(n, prod(weight_shape))`` of a bounded number of samples
    at a time, with the first sample's index."""
    n = math.prod(weight_shape(f))
    step = max(1, BUDGET // max(n, 1))
    for s, part in _slices(f, step):
        buf = part.d.new_empty(part.d.shape[0], n)
        _layers.write(part, buf, None)
        yield s, buf


def project_weight(
    f: _layers.Factors, p: Projector, name: str, shape: tuple[int, ...], cols: slice
) -> Tensor:
    """``R g_i`` for the weight part (columns ``cols`` of parameter ``name``) of one form."""
    b = f.d.shape[0]
    if f.kind == "outer" and p.kronecker(shape):
        p_out, p_in = p.factors(name, shape)
        rest = math.prod(shape[1:])
        rows = slice(cols.start // rest, cols.stop // rest)
        pa = f.a @ p_in.t()
        pd = f.d @ p_out[:, rows].t()
        return torch.bmm(pd.transpose(1, 2), pa).reshape(b, -1)
    if f.kind == "embed" and p.kronecker(shape):
        p_out, p_in = p.factors(name, shape)
        pa = f.d @ p_in.t()  # (B, T, m_in)
        pv = p_out.t()[f.a]  # (B, T, m_out): the rows of P_out the indices pick
        return torch.bmm(pv.transpose(1, 2), pa).reshape(b, -1)
    if f.kind == "outer" and f.a.shape[1] == 1 and not p.kronecker(shape):
        o, k = f.d.shape[2], f.a.shape[2]
        a, d = f.a[:, 0], f.d[:, 0]
        out = a.new_empty(b, p.dim)
        for rows, block in p.blocks(name, shape):
            r = block[:, cols].reshape(-1, o, k)
            y = (a @ r.reshape(-1, k).t()).reshape(b, -1, o)
            torch.sum(y * d.unsqueeze(1), dim=2, out=out[:, rows])
        return out
    if f.kind == "embed" and not p.kronecker(shape):
        v, e = f.size, f.d.shape[2]
        out = f.d.new_zeros(b, p.dim)
        idx = f.a.reshape(b, -1)
        for rows, block in p.blocks(name, shape):
            r = block.reshape(-1, v, e)
            step = max(1, BUDGET // max(1, r.shape[0] * idx.shape[1] * e))
            for s in range(0, b, step):
                picked = r[:, idx[s : s + step]]  # (kb, n, T, E)
                out[s : s + step, rows] = torch.einsum("kbte,bte->bk", picked, f.d[s : s + step])
        return out
    out = f.d.new_empty(b, p.dim)
    for s, g in weight_chunks(f):
        out[s : s + g.shape[0]] = p.dense(g, name, shape, cols)
    return out


def _gram_cheaper(fa: _layers.Factors, fb: _layers.Factors, n: int) -> bool:
    """Whether the Gram form of a dot product costs fewer flops than materializing."""
    ba, ta, bb, tb = fa.d.shape[0], fa.d.shape[1], fb.d.shape[0], fb.d.shape[1]
    width = fa.d.shape[2] + (fa.a.shape[2] if fa.kind == "outer" else 1)
    return ba * bb * ta * tb * width <= (ba * ta + bb * tb) * n + ba * bb * n


def dot_weight(fa: _layers.Factors, fb: _layers.Factors) -> Tensor:
    """``<grad W_i, grad W'_j>`` for every pair of samples of two forms of one layer."""
    n = math.prod(weight_shape(fa))
    if fa.kind in ("outer", "embed") and _gram_cheaper(fa, fb, n):
        if fa.d.shape[1] == 1 and fb.d.shape[1] == 1:
            gd = fa.d[:, 0] @ fb.d[:, 0].t()
            if fa.kind == "outer":
                return (fa.a[:, 0] @ fb.a[:, 0].t()) * gd
            return (fa.a[:, 0, None] == fb.a[None, :, 0]).to(gd.dtype) * gd
        out = fa.d.new_empty(fa.d.shape[0], fb.d.shape[0])
        bb, ta, tb = fb.d.shape[0], fa.d.shape[1], fb.d.shape[1]
        step = max(1, BUDGET // max(1, bb * ta * tb))
        for s, part in _slices(fa, step):
            gd = torch.einsum("ito,jso->ijts", part.d, fb.d)
            if fa.kind == "outer":
                ga = torch.einsum("itk,jsk->ijts", part.a, fb.a)
            else:
                ga = (part.a[:, None, :, None] == fb.a[None, :, None, :]).to(gd.dtype)
            out[s : s + part.d.shape[0]] = (ga * gd).sum((2, 3))
        return out
    out = fa.d.new_empty(fa.d.shape[0], fb.d.shape[0])
    for s, ga in weight_chunks(fa):
        for r, gb in weight_chunks(fb):
            out[s : s + ga.shape[0], r : r + gb.shape[0]] = ga @ gb.t()
    return out
