"""Mixed partial derivatives from univariate Taylor jets (Griewank, Utke and Walther 2000).

Along a direction ``S i = sum_l i_l e_l`` (``i`` a multi-index over the ``m`` variables of the
partial, ``|i| = d``), the ``d``-th normalized Taylor coefficient is, by the multinomial theorem,

    f_d(i) = (1/d!) d^d/dt^d f(x + t S i) = sum_{|a| = d} (d^a f / a!) i^a .

Over the ``binom(d + m - 1, m - 1)`` directions with ``|i| = d`` the monomials ``i^a`` form an
invertible matrix (the simplex lattice is unisolvent for degree-``d`` polynomials), so every
partial of order ``d`` is a fixed combination ``d^j f / j! = sum_i gamma_ij f_d(i)``. GUW give
``gamma`` in closed form; here it is obtained by solving that interpolation system exactly in
rationals, once per multi-index (cached), which yields the same numbers and is easy to verify.
All directions propagate together in one vmapped jet of order ``d``, instead of a nest of depth
``d`` whose cost grows exponentially.
"""

from __future__ import annotations

import functools
import itertools
import math
from fractions import Fraction

__all__ = ["closure", "exponents", "interpolation", "power_pairs", "product_pairs"]


def _compositions(total: int, parts: int) -> list[tuple[int, ...]]:
    """Every tuple of ``parts`` non-negative ints summing to ``total``."""
    out = []
    for bars in itertools.combinations(range(total + parts - 1), parts - 1):
        edges = (-1, *bars, total + parts - 1)
        out.append(tuple(edges[i + 1] - edges[i] - 1 for i in range(parts)))
    return out


def _solve(matrix: list[list[Fraction]], rhs: list[Fraction]) -> list[Fraction]:
    """Exact Gaussian elimination with row pivoting."""
    n = len(rhs)
    rows = [[*row, b] for row, b in zip(matrix, rhs, strict=True)]
    for col in range(n):
        pivot = next(r for r in range(col, n) if rows[r][col] != 0)
        rows[col], rows[pivot] = rows[pivot], rows[col]
        inv = 1 / rows[col][col]
        rows[col] = [v * inv for v in rows[col]]
        for r in range(n):
            if r != col and rows[r][col] != 0:
                factor = rows[r][col]
                rows[r] = [v - factor * w for v, w in zip(rows[r], rows[col], strict=True)]
    return [row[n] for row in rows]


@functools.cache
def interpolation(j: tuple[int, ...]) -> tuple[tuple[tuple[int, ...], Fraction], ...]:
    """The directions ``i`` and exact non-zero weights ``gamma_ij`` for the multi-index ``j``.

    ``d^j f / j! = sum_i gamma_ij f_d(i)``; for ``d^2 f / dx dy``:

    >>> [(i, str(g)) for i, g in interpolation((1, 1))]
    [((0, 2), '-1/4'), ((1, 1), '1'), ((2, 0), '-1/4')]
    """
    d = sum(j)
    lattice = _compositions(d, len(j))
    # rows: monomials a; columns: directions i; entry i^a. Solve sum_i gamma_i i^a = [a == j].
    matrix = [
        [Fraction(math.prod(il**al for il, al in zip(i, a, strict=True))) for i in lattice]
        for a in lattice
    ]
    rhs = [Fraction(int(a == j)) for a in lattice]
    gammas = _solve(matrix, rhs)
    return tuple((i, g) for i, g in zip(lattice, gammas, strict=True) if g)


Monomial = tuple[int, ...]
"""A multi-index over the seed variables of a multivariate jet: ``(2, 1)`` is ``s_0^2 s_1``."""


def exponents(
    terms: tuple[tuple[int, ...], ...],
) -> tuple[tuple[int, ...], tuple[Monomial, ...]]:
    """``(variables, monomials)`` of ``wrt`` tuples: the coordinates they name, sorted, and each
    tuple as a multi-index over them.

    >>> exponents(((0, 0), (2,), ()))
    ((0, 2), ((2, 0), (0, 1), (0, 0)))
    """
    variables = tuple(sorted({i for term in terms for i in term}))
    return variables, tuple(tuple(term.count(v) for v in variables) for term in terms)


@functools.cache
def closure(terms: tuple[Monomial, ...]) -> tuple[Monomial, ...]:
    """Every monomial dividing one of ``terms``, sorted by degree (the constant first, then the
    variables in order, ...): the rows of a multivariate jet that yields the partials ``terms``.

    >>> closure(((2, 0), (1, 1)))
    ((0, 0), (1, 0), (0, 1), (1, 1), (2, 0))
    """
    m = len(terms[0])
    found = {(0,) * m}
    for term in terms:
        found.update(itertools.product(*(range(e + 1) for e in term)))
    first = [tuple(int(i == v) for i in range(m)) for v in range(m)]
    rest = sorted(found.difference(first, [(0,) * m]), key=lambda a: (sum(a), a))
    return ((0,) * m, *(a for a in first if a in found), *rest)


def _add(a: Monomial, b: Monomial) -> Monomial:
    return tuple(x + y for x, y in zip(a, b, strict=True))


@functools.cache
def product_pairs(monomials: tuple[Monomial, ...]) -> tuple[tuple[int, int, int, int], ...]:
    """``(i, j, k, 1)`` for every pair of rows whose monomials multiply into row ``k``'s: the
    truncated product of two multivariate jets, ``c_k = sum a_i b_j``."""
    index = {a: k for k, a in enumerate(monomials)}
    out: list[tuple[int, int, int, int]] = []
    for i, a in enumerate(monomials):
        for j, b in enumerate(monomials):
            k = index.get(_add(a, b))
            if k is not None:
                out.append((i, j, k, 1))
    return tuple(out)


@functools.cache
def power_pairs(
    monomials: tuple[Monomial, ...], power: int, rows: int
) -> tuple[tuple[int, int, int, int], ...]:
    """How ``delta^power`` follows from ``delta^(power - 1)`` and ``delta``, where ``delta`` is
    the jet without its constant and only its first ``rows`` rows after the constant may be
    nonzero (``rows = m``: an affine jet).

    Rows are numbered from the first of degree >= ``power`` (``delta^power`` has no others).
    Each entry is ``(i, j, k, w)``: ``w delta[i] delta^(power - 1)[j]`` adds into row ``k`` of
    ``delta^power``; for ``power = 2`` the symmetric pairs are merged (``w = 2``).
    """
    degrees = [sum(a) for a in monomials]
    start = [
        next((k for k, d in enumerate(degrees) if d >= p), len(degrees)) for p in range(power + 1)
    ]
    index = {a: k for k, a in enumerate(monomials)}
    out: dict[tuple[int, int, int], int] = {}
    for i in range(1, 1 + rows):
        for j in range(start[power - 1], len(monomials)):
            if power == 2 and j > 1 + rows - 1:
                continue  # delta's own rows beyond ``rows`` are zero
            k = index.get(_add(monomials[i], monomials[j]))
            if k is None:
                continue
            key = (i - 1, j - start[power - 1], k - start[power])
            if power == 2:
                key = (min(key[0], key[1]), max(key[0], key[1]), key[2])
            out[key] = out.get(key, 0) + 1
    return tuple(
        (i, j, k, w) for (i, j, k), w in sorted(out.items(), key=lambda e: (e[0][2], e[0]))
    )
