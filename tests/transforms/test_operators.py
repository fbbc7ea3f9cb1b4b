"""Linear differential operators: ``differential_operator``, the weighted and stochastic
``laplacian``, ``divergence`` and ``bilaplacian``, against independent oracles (traces of
``torch.func.hessian``, sums of nested partials, sympy), composed with ``vmap``, ``batched`` and
``grad``; the stochastic estimators' means and variances tested against their formulas with
CLT-based tolerances (a fixed seed, never a fudge factor)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from expressions import Expression, exact_partial, expressions, points, tame
from helpers import METHODS, assert_close, mlp, seeded
from hypothesis import assume, given, settings
from torch import Tensor
from torch.func import hessian, jacrev, vmap

import hodfunc
from hodfunc import Method

F64 = torch.float64
D = 4
NET = mlp(D, 8, 2, "tanh")  # two outputs: every operator is taken per component
X = torch.randn(D, generator=seeded(1), dtype=F64)
POINTS = torch.randn(6, D, generator=seeded(2), dtype=F64)
Z = 4.0  # CLT: a 4-sigma band fails a correct estimator with probability 6e-5


def f(x: Tensor) -> Tensor:
    out: Tensor = NET(x)
    return out


def hess(g: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``out_shape + (d, d)``: the oracle every second-order operator is a contraction of."""
    h: Tensor = hessian(g)(x)
    return h.detach()


def symmetric_indefinite(d: int, seed: int) -> Tensor:
    a = torch.randn(d, d, generator=seeded(seed), dtype=F64)
    return a + a.T - 2 * torch.eye(d, dtype=F64)  # eigenvalues of both signs


# ---------------------------------------------------------------------------------------------
# the weighted Laplacian, exact


@pytest.mark.parametrize("method", METHODS)
def test_weighted_laplacian_full_c(method: Method) -> None:
    C = symmetric_indefinite(D, 3)
    eigenvalues = torch.linalg.eigvalsh(C)
    assert bool((eigenvalues < 0).any())
    assert bool((eigenvalues > 0).any())
    expected = (hess(f, X) * C).sum((-2, -1))
    assert_close(hodfunc.laplacian(f, weights=C, method=method)(X), expected)
    # C requiring grad takes the quadratic form (d unit directions), else its signed eigenvectors
    leaf = C.clone().requires_grad_()
    got = hodfunc.laplacian(f, weights=leaf, method=method)(X)
    assert_close(got, expected)
    (grad,) = torch.autograd.grad(got[0], leaf)
    assert_close(grad, hess(f, X)[0])
    low = torch.randn(D, 2, generator=seeded(30), dtype=F64)  # rank 2, indefinite
    low_c = low @ torch.diag(torch.tensor([1.0, -1.0], dtype=F64)) @ low.T
    assert_close(
        hodfunc.laplacian(f, weights=low_c, method=method)(X), (hess(f, X) * low_c).sum((-2, -1))
    )
    zero = torch.zeros(D, D, dtype=F64)
    assert_close(hodfunc.laplacian(f, weights=zero, method=method)(X), torch.zeros(2, dtype=F64))
    skew = torch.randn(D, D, generator=seeded(4), dtype=F64)  # not symmetric: tr(C H) still
    expected = torch.einsum("ij,oji->o", skew, hess(f, X))
    assert_close(hodfunc.laplacian(f, weights=skew, method=method)(X), expected)


@pytest.mark.parametrize("method", METHODS)
def test_weighted_laplacian_factor_and_signs(method: Method) -> None:
    S = torch.randn(D, 2, generator=seeded(5), dtype=F64)
    H = hess(f, X)
    expected = (H * (S @ S.T)).sum((-2, -1))
    assert_close(hodfunc.laplacian(f, weights=S, factor=True, method=method)(X), expected)
    signs = torch.tensor([1.5, -0.5], dtype=F64)  # C = S diag(signs) S^T: indefinite, rank 2
    C = S @ torch.diag(signs) @ S.T
    got = hodfunc.laplacian(f, weights=S, factor=True, signs=signs, method=method)(X)
    assert_close(got, (H * C).sum((-2, -1)))
    assert_close(got, hodfunc.laplacian(f, weights=C, method=method)(X))


def test_weighted_laplacian_identity_is_the_laplacian() -> None:
    eye = torch.eye(D, dtype=F64)
    plain = hodfunc.laplacian(f)(X)
    assert_close(hodfunc.laplacian(f, weights=eye)(X), plain)
    assert_close(hodfunc.laplacian(f, weights=eye, factor=True)(X), plain)


def test_laplacian_of_a_vector_valued_function_is_per_component() -> None:
    def g(x: Tensor) -> Tensor:
        return torch.stack([torch.sin(x[0]) * x[1] ** 2, x.pow(3).sum(), torch.tanh(x[2] * x[3])])

    got = hodfunc.laplacian(g)(X)
    expected = hess(g, X).diagonal(dim1=-2, dim2=-1).sum(-1)
    assert got.shape == (3,)
    assert_close(got, expected)


def test_weighted_laplacian_composes_with_vmap_batched_and_grad() -> None:
    C = symmetric_indefinite(D, 6)
    S = torch.randn(D, 3, generator=seeded(7), dtype=F64)
    expected = torch.stack([(hess(f, p) * C).sum((-2, -1)) for p in POINTS])
    assert_close(vmap(hodfunc.laplacian(f, weights=C))(POINTS), expected)
    assert_close(hodfunc.batched(hodfunc.laplacian(f, weights=C), chunk_size=4)(POINTS), expected)
    # grad over the weights: d tr(C H) / dC = H (H symmetric)
    grad_c = torch.func.grad(lambda c: hodfunc.laplacian(f, weights=c)(X)[0])(C)
    assert_close(grad_c, hess(f, X)[0])
    grad_s = torch.func.grad(lambda s: hodfunc.laplacian(f, weights=s, factor=True)(X)[0])(S)
    assert_close(grad_s, 2 * hess(f, X)[0] @ S)  # d tr(S^T H S) / dS = 2 H S
    # grad over the network's weights, against the nested method
    params: dict[str, Tensor] = dict(NET.named_parameters())

    def loss(p: dict[str, Tensor], method: Method) -> Tensor:
        def u(x: Tensor) -> Tensor:
            out: Tensor = torch.func.functional_call(NET, p, (x,))
            return out

        return vmap(hodfunc.laplacian(u, weights=C, method=method))(POINTS).pow(2).mean()

    got = torch.func.grad(loss)(params, "taylor")
    ref = torch.func.grad(loss)(params, "nested")
    for name in params:
        assert_close(got[name], ref[name])


def test_operators_compose_with_partials_and_batched() -> None:
    C = symmetric_indefinite(D, 31)
    g = lambda x: f(x)[0]  # noqa: E731
    taylor = hodfunc.partial(hodfunc.laplacian(g, weights=C), (0,))
    nested = hodfunc.partial(
        hodfunc.laplacian(g, weights=C, method="nested"), (0,), method="nested"
    )
    assert_close(vmap(taylor)(POINTS), vmap(nested)(POINTS))
    op = hodfunc.differential_operator(f, SECOND)
    assert_close(hodfunc.batched(op, chunk_size=4)(POINTS), vmap(nested_sum(f, SECOND))(POINTS))
    d_lap = hodfunc.partials(hodfunc.laplacian(g), {"lap": (), "lap_x": (1,)})
    got = vmap(d_lap)(POINTS)
    assert_close(got["lap"], vmap(hodfunc.laplacian(g, method="nested"))(POINTS))
    assert_close(
        got["lap_x"],
        vmap(hodfunc.partial(hodfunc.laplacian(g, method="nested"), (1,), method="nested"))(POINTS),
    )


@pytest.mark.filterwarnings("ignore::hodfunc.RangeWarning")
@settings(max_examples=8)
@given(e=expressions(max_depth=3, n_vars=3), p=points(3))
def test_weighted_laplacian_sympy(e: Expression, p: tuple[float, ...]) -> None:
    H = [[exact_partial(e, p, (i, j)) for j in range(3)] for i in range(3)]
    assume(tame([h for row in H for h in row]))
    C = [[1.0, 0.5, -2.0], [0.5, -1.0, 0.25], [-2.0, 0.25, 3.0]]
    exact = sum(C[i][j] * H[i][j] for i in range(3) for j in range(3))
    got = hodfunc.laplacian(e, weights=torch.tensor(C, dtype=F64), method="taylor")(e.at(p))
    assert abs(got.item() - exact) <= 1e-10 * max(1.0, abs(exact))


# ---------------------------------------------------------------------------------------------
# differential_operator


def nested_sum(
    g: Callable[[Tensor], Tensor], terms: dict[tuple[int, ...], float]
) -> Callable[[Tensor], Tensor]:
    def op(x: Tensor) -> Tensor:
        out = torch.zeros(())
        for wrt, c in terms.items():
            out = out + c * hodfunc.partial(g, wrt, method="nested")(x)
        return out

    return op


SECOND = {(): 0.5, (1,): -2.0, (0, 0): 1.0, (2, 2): 0.25, (0, 1): 0.5, (1, 0): 0.25, (3,): 1.0}
PURE = {(0, 0): 1.0, (1, 1): -1.0, (2,): 3.0}
HIGH = {(0, 0, 1): 2.0, (1, 1): -1.0, (0,): 1.0, (2, 2, 3, 3): 0.5, (): 1.0}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("terms", [SECOND, PURE, HIGH], ids=["mixed-second", "pure", "order-4"])
def test_differential_operator_against_nested_partials(
    method: Method, terms: dict[tuple[int, ...], float]
) -> None:
    op = hodfunc.differential_operator(f, terms, method=method)
    assert_close(op(X), nested_sum(f, terms)(X))
    assert_close(vmap(op)(POINTS), vmap(nested_sum(f, terms))(POINTS))


def test_differential_operator_tensor_coefficients() -> None:
    # coefficients that vary per point (built inside the mapped function) and that train
    a = torch.rand(len(POINTS), generator=seeded(8), dtype=F64)

    def op(x: Tensor, ax: Tensor) -> Tensor:
        return hodfunc.differential_operator(f, {(0, 0): ax, (1,): 1.0 - ax, (0, 1): ax**2})(x)

    got = vmap(op)(POINTS, a)
    H = vmap(hess, in_dims=(None, 0))(f, POINTS)
    J = vmap(jacrev(f))(POINTS)
    expected = (
        a[:, None] * H[..., 0, 0] + (1 - a[:, None]) * J[..., 1] + a[:, None] ** 2 * H[..., 0, 1]
    )
    assert_close(got, expected)
    grad = torch.func.grad(
        lambda c: hodfunc.differential_operator(f, {(0, 0): c, (3, 3): 1.0})(X)[1]
    )
    assert_close(grad(torch.tensor(0.3, dtype=F64)), hess(f, X)[1, 0, 0])
    # a per-output coefficient (shape of f's output) takes the multivariate path
    w = torch.tensor([1.0, -3.0], dtype=F64)
    got = hodfunc.differential_operator(f, {(1, 1): w, (2,): 1.0})(X)
    assert_close(got, w * hess(f, X)[:, 1, 1] + jacrev(f)(X)[:, 2])


@pytest.mark.filterwarnings("ignore::hodfunc.RangeWarning")  # subnormal points: see test_sympy
@settings(max_examples=8)
@given(e=expressions(max_depth=3, n_vars=2), p=points(2))
def test_differential_operator_sympy(e: Expression, p: tuple[float, ...]) -> None:
    terms = {(0, 0): 1.0, (0, 1): -0.5, (1,): 2.0, (0, 1, 1): 0.25, (): -1.0}
    parts = [c * exact_partial(e, p, wrt) for wrt, c in terms.items()]
    assume(tame(parts))
    exact = sum(parts)
    for t in ({k: v for k, v in terms.items() if len(k) < 3}, terms):
        exact = sum(c * exact_partial(e, p, wrt) for wrt, c in t.items())
        got = hodfunc.differential_operator(e, t, method="taylor")(e.at(p)).item()
        assert abs(got - exact) <= 1e-10 * max(1.0, abs(exact)), (t, got, exact)


# ---------------------------------------------------------------------------------------------
# divergence


def field(x: Tensor) -> Tensor:
    return torch.tanh(NET.l1.weight[:D, :] @ x) * x.roll(1) + torch.sin(x) ** 2


@pytest.mark.parametrize("method", METHODS)
def test_divergence(method: Method) -> None:
    expected = jacrev(field)(X).trace()
    assert_close(hodfunc.divergence(field, method=method)(X), expected)
    assert_close(
        vmap(hodfunc.divergence(field, method=method))(POINTS),
        torch.stack([jacrev(field)(p).trace() for p in POINTS]),
    )


def test_divergence_hutchinson_is_unbiased() -> None:
    J = jacrev(field)(X).detach()
    A = (J + J.T) / 2  # z^T J z = z^T A z
    var = 2 * (A.pow(2).sum() - A.diagonal().pow(2).sum())  # Rademacher, per sample
    n = 400
    div = hodfunc.divergence(field, estimator="hutchinson", samples=n, generator=seeded(9))
    got = div(X).detach()
    assert abs(float(got - J.trace())) <= Z * math.sqrt(float(var) / n)


# ---------------------------------------------------------------------------------------------
# bilaplacian


def nested_bilaplacian(g: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    return hodfunc.laplacian(hodfunc.laplacian(g, method="nested"), method="nested")


@pytest.mark.parametrize("method", METHODS)
def test_bilaplacian_against_laplacian_of_laplacian(method: Method) -> None:
    g = mlp(3, 6, 2, "tanh", seed=3)
    x = X[:3]
    assert_close(hodfunc.bilaplacian(g, method=method)(x), nested_bilaplacian(g)(x))
    assert_close(
        vmap(hodfunc.bilaplacian(g, method=method))(POINTS[:3, :3]),
        vmap(nested_bilaplacian(g))(POINTS[:3, :3]),
    )


@pytest.mark.filterwarnings("ignore::hodfunc.RangeWarning")
@settings(max_examples=5)
@given(e=expressions(max_depth=2, n_vars=2), p=points(2))
def test_bilaplacian_sympy(e: Expression, p: tuple[float, ...]) -> None:
    parts = [exact_partial(e, p, (i, i, j, j)) for i in range(2) for j in range(2)]
    assume(tame(parts))
    got = hodfunc.bilaplacian(e, method="taylor")(e.at(p)).item()
    assert abs(got - sum(parts)) <= 1e-10 * max(1.0, abs(sum(parts)))


def test_bilaplacian_grad_over_weights() -> None:
    g = mlp(3, 6, 1, "tanh", seed=4)
    params: dict[str, Tensor] = dict(g.named_parameters())

    def loss(p: dict[str, Tensor], taylor: bool) -> Tensor:
        def u(x: Tensor) -> Tensor:
            out: Tensor = torch.func.functional_call(g, p, (x,))
            return out

        op = hodfunc.bilaplacian(u, method="taylor") if taylor else nested_bilaplacian(u)
        return vmap(op)(POINTS[:2, :3]).pow(2).sum()

    got, ref = torch.func.grad(loss)(params, True), torch.func.grad(loss)(params, False)
    for name in params:
        assert_close(got[name], ref[name], rtol=1e-9)


# ---------------------------------------------------------------------------------------------
# stochastic estimators: unbiasedness and the variance formula, with CLT tolerances


def quadratic(A: Tensor) -> Callable[[Tensor], Tensor]:
    """``x^T A x / 2 + sin(x_0)`` at 0: Hessian ``A`` exactly, so each draw is ``z^T A z``."""

    def q(x: Tensor) -> Tensor:
        return 0.5 * x @ A @ x + torch.sin(x[0])

    return q


def draws(op: Callable[[Tensor], Tensor], x: Tensor, n: int) -> Tensor:
    return torch.stack([op(x) for _ in range(n)]).detach()


def check_mean_and_variance(values: Tensor, mean: float, var: float) -> None:
    """The sample mean within ``Z`` standard errors of ``mean``; the sample variance within ``Z``
    standard errors of ``var`` (the standard error of a variance from the fourth central moment)."""
    n = values.numel()
    assert abs(float(values.mean()) - mean) <= Z * math.sqrt(var / n), (float(values.mean()), mean)
    centered = values - values.mean()
    s2 = float(centered.pow(2).mean())
    m4 = float(centered.pow(4).mean())
    assert abs(s2 - var) <= Z * math.sqrt(max(m4 - s2**2, 0.0) / n) + 1e-12, (s2, var)


@pytest.mark.parametrize("distribution", ["rademacher", "normal"])
def test_hutchinson_laplacian_mean_and_variance(distribution: str) -> None:
    A = symmetric_indefinite(5, 10)
    x = torch.zeros(5, dtype=F64)
    op = hodfunc.laplacian(
        quadratic(A),
        estimator="hutchinson",
        samples=1,
        distribution=distribution,  # type: ignore[arg-type]
        generator=seeded(11),
    )
    frob, diag = float(A.pow(2).sum()), float(A.diagonal().pow(2).sum())
    var = 2 * frob if distribution == "normal" else 2 * (frob - diag)
    check_mean_and_variance(draws(op, x, 600), float(A.trace()), var)


def test_hutchinson_weighted_laplacian_is_unbiased() -> None:
    # a network (no closed form): 4 standard errors of the sample mean, for each form of C
    H = hess(f, X)[0]

    def g(x: Tensor) -> Tensor:
        return f(x)[0]

    S = torch.randn(D, 2, generator=seeded(12), dtype=F64)
    C = symmetric_indefinite(D, 13)
    signs = torch.tensor([1.0, -2.0], dtype=F64)
    cases = {
        "plain": ({}, H.trace()),
        "full": ({"weights": C}, (H * C).sum()),
        "factor": ({"weights": S, "factor": True}, (H * (S @ S.T)).sum()),
        "signs": ({"weights": S, "factor": True, "signs": signs}, (H * (S * signs @ S.T)).sum()),
    }
    for name, (kwargs, exact) in cases.items():
        op = hodfunc.laplacian(g, estimator="hutchinson", samples=1, generator=seeded(14), **kwargs)  # type: ignore[arg-type]
        values = draws(op, X, 300)
        se = float(values.std()) / math.sqrt(values.numel())
        assert abs(float(values.mean() - exact)) <= Z * se, name


def stde_variance(h: Tensor, s: int) -> float:
    """Var of ``(d/s) sum_{j in J} h_j`` over uniform ``s``-subsets ``J`` (without replacement)."""
    d = h.numel()
    pop = float(h.var(unbiased=False))
    return d**2 * pop / s * (d - s) / (d - 1)


def test_stde_laplacian_variance_and_one_over_sqrt_samples() -> None:
    d = 1000
    a = torch.randn(d, generator=seeded(15), dtype=F64)

    def g(x: Tensor) -> Tensor:  # Hessian diagonal -a sin(x)
        return (a * torch.sin(x)).sum()

    x = torch.randn(d, generator=seeded(16), dtype=F64)
    h = -a * torch.sin(x)
    rmse = {}
    for s in (4, 16, 64):
        op = hodfunc.laplacian(g, estimator="stde", samples=s, generator=seeded(17 + s))
        values = draws(op, x, 300)
        var = stde_variance(h, s)
        check_mean_and_variance(values, float(h.sum()), var)
        rmse[s] = math.sqrt(float((values - h.sum()).pow(2).mean()))
    # the error shrinks as 1/sqrt(samples): each factor of 4 in samples halves it (about)
    for s in (4, 16):
        ratio = rmse[s] / rmse[4 * s]
        expected = math.sqrt(stde_variance(h, s) / stde_variance(h, 4 * s))
        assert abs(expected - 2) < 0.1  # (d - s)/(d - 1) is near 1 at d = 1000
        assert abs(ratio / expected - 1) < Z * math.sqrt(2 / 300) * 1.5  # two independent RMSEs
    # all coordinates: exact
    full = hodfunc.laplacian(g, estimator="stde", samples=d, generator=seeded(1))(x)
    assert_close(full, h.sum())


def test_stde_weighted_and_bilaplacian_are_unbiased() -> None:
    def g(x: Tensor) -> Tensor:
        return f(x)[1]

    H = hess(f, X)[1]
    C = symmetric_indefinite(D, 18)
    op = hodfunc.laplacian(g, weights=C, estimator="stde", samples=2, generator=seeded(19))
    values = draws(op, X, 300)
    assert abs(float(values.mean() - (H * C).sum())) <= Z * float(values.std()) / math.sqrt(300)
    k = mlp(3, 4, 1, "tanh", seed=5)
    x = X[:3]
    exact = float(nested_bilaplacian(k)(x).detach())
    for kwargs in ({"estimator": "stde", "samples": 2}, {"estimator": "hutchinson", "samples": 4}):
        bi = hodfunc.bilaplacian(k, generator=seeded(20), **kwargs)  # type: ignore[arg-type]
        values = draws(bi, x, 200)
        assert abs(float(values.mean()) - exact) <= Z * float(values.std()) / math.sqrt(200)
    every = hodfunc.bilaplacian(k, estimator="stde", samples=3, generator=seeded(0))(x)
    assert_close(every, nested_bilaplacian(k)(x))


def test_estimators_are_reproducible_and_leave_the_global_rng_alone() -> None:
    state = torch.random.get_rng_state()

    def op() -> Callable[[Tensor], Tensor]:
        return hodfunc.laplacian(f, estimator="hutchinson", samples=3, generator=seeded(21))

    assert_close(op()(X), op()(X))
    hodfunc.laplacian(f, estimator="hutchinson", samples=3)(X)  # a private generator
    assert torch.equal(torch.random.get_rng_state(), state)


# ---------------------------------------------------------------------------------------------
# errors name the API, the rule, the value and the fix


def test_errors() -> None:
    with pytest.raises(
        hodfunc.ShapeError,
        match=r"hodfunc.laplacian: weights=C must have shape \(d, d\) = \(4, 4\)"
        r".*got shape \(4, 3\).*factor=True",
    ):
        hodfunc.laplacian(f, weights=torch.ones(4, 3, dtype=F64))(X)
    with pytest.raises(
        hodfunc.ShapeError, match=r"factor=True must have shape \(d, r\).*got shape \(3, 2\)"
    ):
        hodfunc.laplacian(f, weights=torch.ones(3, 2, dtype=F64), factor=True)(X)
    with pytest.raises(
        hodfunc.ArgumentError,
        match=r"hodfunc.differential_operator: wrt indices.*below x.numel\(\) = 4.*wrt=\(0, 7\)",
    ):
        hodfunc.differential_operator(f, {(0, 7): 1.0})(X)
    with pytest.raises(
        hodfunc.ArgumentError,
        match=r"hodfunc.laplacian: estimator='hutchinson' needs samples, an int >= 1"
        r".*samples=0.*samples=16",
    ):
        hodfunc.laplacian(f, estimator="hutchinson", samples=0)
    with pytest.raises(
        hodfunc.ArgumentError, match=r"samples= applies to a random estimator.*samples=4"
    ):
        hodfunc.laplacian(f, samples=4)
    with pytest.raises(
        hodfunc.ArgumentError,
        match=r"hodfunc.divergence: this operator supports the estimators "
        r"\['exact', 'hutchinson'\].*estimator='stde'",
    ):
        hodfunc.divergence(field, estimator="stde", samples=4)  # type: ignore[arg-type]
    with pytest.raises(
        hodfunc.ArgumentError,
        match=r"hodfunc.bilaplacian: the randomized bilaplacian needs Gaussian"
        r".*distribution='rademacher'",
    ):
        hodfunc.bilaplacian(f, estimator="hutchinson", samples=4, distribution="rademacher")  # type: ignore[arg-type]
    with pytest.raises(hodfunc.ArgumentError, match=r"needs samples >= 2.*samples=1"):
        hodfunc.bilaplacian(f, estimator="stde", samples=1)
    with pytest.raises(hodfunc.ArgumentError, match=r"estimator must be one of"):
        hodfunc.laplacian(f, estimator="monte-carlo")  # type: ignore[arg-type]
    with pytest.raises(
        hodfunc.ShapeError, match=r"hodfunc.divergence: F must map R\^d to R\^d.*shape \(2,\)"
    ):
        hodfunc.divergence(f)(X)
    with pytest.raises(
        hodfunc.ArgumentTypeError, match=r"every coefficient in terms must be a number"
    ):
        hodfunc.differential_operator(f, {(0,): "1"})  # type: ignore[dict-item]
    with pytest.raises(hodfunc.ArgumentError, match=r"signs= weights the columns of a factor"):
        hodfunc.laplacian(f, weights=torch.eye(4, dtype=F64), signs=torch.ones(4, dtype=F64))


@pytest.mark.parametrize("form", ["plain", "signs", "full"])
def test_products_of_two_jets_in_every_form(form: str) -> None:
    # bilinear ops whose two arguments both depend on x: elementwise and matmul-like
    M = torch.randn(D, D, generator=seeded(40), dtype=F64)

    def g(x: Tensor) -> Tensor:
        y = torch.tanh(x)
        return torch.stack([(x @ M) @ y, (torch.sin(x) * y).sum(), torch.outer(y, x).trace()])

    S = torch.randn(D, 3, generator=seeded(41), dtype=F64)
    signs = torch.tensor([1.0, -0.5, 2.0], dtype=F64)
    kwargs: dict[str, object] = {
        "plain": {"weights": S, "factor": True},
        "signs": {"weights": S, "factor": True, "signs": signs},
        "full": {"weights": symmetric_indefinite(D, 42).requires_grad_()},
    }[form]  # type: ignore[assignment]
    C = {
        "plain": S @ S.T,
        "signs": S @ torch.diag(signs) @ S.T,
        "full": kwargs["weights"],
    }[form]
    assert isinstance(C, Tensor)
    got = hodfunc.laplacian(g, method="taylor", **kwargs)(X)  # type: ignore[arg-type]
    assert_close(got, (hess(g, X) * C.detach()).sum((-2, -1)))
