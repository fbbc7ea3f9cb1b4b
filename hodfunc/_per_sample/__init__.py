"""Per-sample gradients, their norms and the DP-SGD clipped sum, without touching ``.grad``.

Modules: ``_capture`` (one batched forward and backward with hooks: which layers it covers, and
the passes every API below iterates), ``_layers`` (each supported layer's canonical form, and the
per-sample gradients, norms and weighted sums read off it), ``_grads`` (``per_sample_grads`` and
the checks every per-sample API shares), ``_norms`` (ghost norms and ``clipped_grad_sum``),
``_attention`` (MultiheadAttention's projections recorded during the batched pass), ``_sketch``
(dot products and random projections of one layer's form) and ``_attribution``
(``per_sample_grad_projections``, ``per_sample_grad_dots``, ``projection_matrix``).
"""

from ._attribution import per_sample_grad_dots as per_sample_grad_dots
from ._attribution import per_sample_grad_projections as per_sample_grad_projections
from ._attribution import projection_matrix as projection_matrix
from ._grads import per_sample_grads as per_sample_grads
from ._norms import clipped_grad_sum as clipped_grad_sum
from ._norms import per_sample_grad_norms as per_sample_grad_norms

__all__ = [
    "clipped_grad_sum",
    "per_sample_grad_dots",
    "per_sample_grad_norms",
    "per_sample_grad_projections",
    "per_sample_grads",
    "projection_matrix",
]
