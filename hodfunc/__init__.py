"""hodfunc: derivatives of any order in PyTorch, built on ``torch.func``.

>>> import torch, hodfunc
>>> hodfunc.derivatives(lambda x: 2 * x**3, order=4)(torch.tensor(-2.0))
tensor([-16.,  24., -24.,  12.,   0.])
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._allocator import tune_cpu_allocator as tune_cpu_allocator
    from ._errors import ArgumentError as ArgumentError
    from ._errors import ArgumentTypeError as ArgumentTypeError
    from ._errors import BatchWarning as BatchWarning
    from ._errors import CacheWarning as CacheWarning
    from ._errors import CompileError as CompileError
    from ._errors import FallbackWarning as FallbackWarning
    from ._errors import HodfuncError as HodfuncError
    from ._errors import HodfuncWarning as HodfuncWarning
    from ._errors import NonFunctionalError as NonFunctionalError
    from ._errors import NonFunctionalModuleError as NonFunctionalModuleError
    from ._errors import PiecewiseLinearWarning as PiecewiseLinearWarning
    from ._errors import PrecisionWarning as PrecisionWarning
    from ._errors import RangeWarning as RangeWarning
    from ._errors import ShapeError as ShapeError
    from ._errors import UnsupportedOperationError as UnsupportedOperationError
    from ._per_sample import clipped_grad_sum as clipped_grad_sum
    from ._per_sample import per_sample_grad_dots as per_sample_grad_dots
    from ._per_sample import per_sample_grad_norms as per_sample_grad_norms
    from ._per_sample import per_sample_grad_projections as per_sample_grad_projections
    from ._per_sample import per_sample_grads as per_sample_grads
    from ._per_sample import projection_matrix as projection_matrix
    from ._taylor import clear_cache as clear_cache
    from ._transforms._batched import batched as batched
    from ._transforms._derivative import derivative as derivative
    from ._transforms._derivative import derivative_tensor as derivative_tensor
    from ._transforms._derivative import derivatives as derivatives
    from ._transforms._derivative import directional_derivative as directional_derivative
    from ._transforms._derivative import laplacian as laplacian
    from ._transforms._derivative import partial as partial
    from ._transforms._derivative import partials as partials
    from ._transforms._jacobian import hessian as hessian
    from ._transforms._jacobian import hvp as hvp
    from ._transforms._jacobian import jacobian as jacobian
    from ._transforms._method import Method as Method
    from ._transforms._operators import Distribution as Distribution
    from ._transforms._operators import Estimator as Estimator
    from ._transforms._operators import bilaplacian as bilaplacian
    from ._transforms._operators import differential_operator as differential_operator
    from ._transforms._operators import divergence as divergence

_LAZY = {
    "tune_cpu_allocator": "._allocator",
    "batched": "._transforms._batched",
    "derivative": "._transforms._derivative",
    "derivative_tensor": "._transforms._derivative",
    "derivatives": "._transforms._derivative",
    "directional_derivative": "._transforms._derivative",
    "laplacian": "._transforms._derivative",
    "partial": "._transforms._derivative",
    "partials": "._transforms._derivative",
    "Method": "._transforms._method",
    "Distribution": "._transforms._operators",
    "Estimator": "._transforms._operators",
    "bilaplacian": "._transforms._operators",
    "differential_operator": "._transforms._operators",
    "divergence": "._transforms._operators",
    "ArgumentError": "._errors",
    "ArgumentTypeError": "._errors",
    "BatchWarning": "._errors",
    "CacheWarning": "._errors",
    "CompileError": "._errors",
    "FallbackWarning": "._errors",
    "HodfuncError": "._errors",
    "HodfuncWarning": "._errors",
    "NonFunctionalError": "._errors",
    "NonFunctionalModuleError": "._errors",
    "PiecewiseLinearWarning": "._errors",
    "PrecisionWarning": "._errors",
    "RangeWarning": "._errors",
    "ShapeError": "._errors",
    "UnsupportedOperationError": "._errors",
    "clipped_grad_sum": "._per_sample",
    "per_sample_grad_norms": "._per_sample",
    "per_sample_grad_dots": "._per_sample",
    "per_sample_grad_projections": "._per_sample",
    "projection_matrix": "._per_sample",
    "hessian": "._transforms._jacobian",
    "hvp": "._transforms._jacobian",
    "jacobian": "._transforms._jacobian",
    "per_sample_grads": "._per_sample",
    "clear_cache": "._taylor",
}


def __getattr__(name: str) -> object:
    """Import a public name's module on first use, so ``import hodfunc`` does not import torch."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hodfunc' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"

__all__ = [
    "ArgumentError",
    "ArgumentTypeError",
    "BatchWarning",
    "CacheWarning",
    "CompileError",
    "Distribution",
    "Estimator",
    "FallbackWarning",
    "HodfuncError",
    "HodfuncWarning",
    "Method",
    "NonFunctionalError",
    "NonFunctionalModuleError",
    "PiecewiseLinearWarning",
    "PrecisionWarning",
    "RangeWarning",
    "ShapeError",
    "UnsupportedOperationError",
    "batched",
    "bilaplacian",
    "clear_cache",
    "clipped_grad_sum",
    "derivative",
    "derivative_tensor",
    "derivatives",
    "differential_operator",
    "directional_derivative",
    "divergence",
    "hessian",
    "hvp",
    "jacobian",
    "laplacian",
    "partial",
    "partials",
    "per_sample_grad_dots",
    "per_sample_grad_norms",
    "per_sample_grad_projections",
    "per_sample_grads",
    "projection_matrix",
    "tune_cpu_allocator",
]
