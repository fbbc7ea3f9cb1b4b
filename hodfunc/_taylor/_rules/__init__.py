"""The Taylor rule of every supported ATen op, registered by family with its properties.

A rule receives the op's arguments with every input-dependent tensor as a ``Jet`` (its coefficient
tensor, leading axis = coefficients) and everything else as it is, and returns the result in the
same form. The families, one module each:

- ``_linear``: views, indexing, reductions, ``cat``, adding a constant;
- ``_products``: bilinear ops and division;
- ``_smooth``: elementwise functions through the recurrences of ``_series``, and powers;
- ``_piecewise``: ``relu``, ``abs``, ``clamp``, ``max``... (recorded, for the
  ``PiecewiseLinearWarning``);
- ``_constant``: ops whose result is locally constant.

``_spec`` holds ``Jet``, ``Context`` and the registry; a rule's properties (``RuleSpec``) are given
where it is registered (``@rule(RuleSpec(...), "name", ...)``), and the ops the trace should lower
first are declared by the family that handles what they become (``decompose``).
"""

from . import _constant, _linear, _piecewise, _products, _smooth  # noqa: F401  (they register)
from ._spec import DECOMPOSE as DECOMPOSE
from ._spec import Context as Context
from ._spec import Jet as Jet
from ._spec import Rule as Rule
from ._spec import RuleSpec as RuleSpec
from ._spec import has_rule as has_rule
from ._spec import keeps_affine as keeps_affine
from ._spec import lookup as lookup
from ._spec import spec_of as spec_of

__all__ = [
    "DECOMPOSE",
    "Context",
    "Jet",
    "Rule",
    "RuleSpec",
    "has_rule",
    "keeps_affine",
    "lookup",
    "spec_of",
]
