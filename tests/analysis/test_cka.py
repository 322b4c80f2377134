"""Linear CKA against its closed form and its invariances; the CKA pairing against brute force."""

import itertools

import pytest
import torch

from featdistill.analysis import best_pairing, cka_matrix, linear_cka, pairing_score, uniform_pairing


def hsic_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Independent formula: HSIC with explicit centring matrices, CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))."""
    x, y = x.reshape(len(x), -1).double(), y.reshape(len(y), -1).double()
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - torch.ones(n, n, dtype=torch.float64) / n
    k, l_ = x @ x.T, y @ y.T

    def hsic(a, b):
        return torch.trace(a @ h @ b @ h) / (n - 1) ** 2

    return float(hsic(k, l_) / torch.sqrt(hsic(k, k) * hsic(l_, l_)))


def random_orthogonal(d: int, gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def test_identical_inputs_give_one(gen):
    x = torch.randn(40, 3, 5, 5, generator=gen)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x.clone().flatten(1)) == pytest.approx(1.0, abs=1e-12)  # flattening is per sample


@pytest.mark.parametrize("dims", [(50, 8, 12), (20, 64, 30)], ids=["feature-space form", "gram form"])
def test_invariant_to_orthogonal_transform_and_isotropic_scaling(gen, dims):
    n, dx, dy = dims
    x = torch.randn(n, dx, generator=gen, dtype=torch.float64)
    y = x[:, : min(dx, dy)] @ torch.randn(min(dx, dy), dy, generator=gen, dtype=torch.float64) \
        + 0.5 * torch.randn(n, dy, generator=gen, dtype=torch.float64)
    base = linear_cka(x, y)
    assert 0.05 < base < 0.999
    assert linear_cka(x @ random_orthogonal(dx, gen), y) == pytest.approx(base, abs=1e-10)
    assert linear_cka(x, 7.5 * (y @ random_orthogonal(dy, gen))) == pytest.approx(base, abs=1e-10)
    assert linear_cka(x + 3.0, y - 1.0) == pytest.approx(base, abs=1e-10)  # a constant shift is centred away


def test_not_invariant_to_a_generic_invertible_map(gen):
    x = torch.randn(60, 10, generator=gen, dtype=torch.float64)
    # invertible but anisotropic: stretches some directions 100x more than others
    a = torch.diag(torch.logspace(0, 2, 10, dtype=torch.float64)) @ random_orthogonal(10, gen)
    assert torch.linalg.matrix_rank(a) == 10
    assert linear_cka(x, x @ a) < 0.9  # CKA is 1 only up to rotation and scale


@pytest.mark.parametrize("dims", [(30, 5, 9), (12, 40, 100), (25, 25, 3)])
def test_matches_hsic_with_centring_matrices(gen, dims):
    n, dx, dy = dims
    x, y = torch.randn(n, dx, generator=gen), torch.randn(n, dy, generator=gen)
    assert linear_cka(x, y) == pytest.approx(hsic_cka(x, y), abs=1e-10)


def test_matrix_matches_pairwise_values(gen):
    student = {"a": torch.randn(16, 4, 3, 3, generator=gen), "b": torch.randn(16, 7, generator=gen)}
    teacher = {"t0": torch.randn(16, 5, 6, generator=gen), "t1": student["a"] * 2,
               "t2": torch.randn(16, 200, generator=gen)}
    m = cka_matrix(student, teacher)
    assert m.shape == (2, 3)
    for i, s in enumerate(student.values()):
        for j, t in enumerate(teacher.values()):
            assert float(m[i, j]) == pytest.approx(hsic_cka(s, t), abs=1e-9)
    assert float(m[0, 1]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same samples"):
        cka_matrix(student, {"x": torch.randn(8, 3)})


def brute_force(c: torch.Tensor, strict: bool) -> float:
    s, t = c.shape
    ok = (lambda js: all(a < b for a, b in zip(js, js[1:]))) if strict else \
        (lambda js: all(a <= b for a, b in zip(js, js[1:])))
    return max(sum(float(c[i, j]) for i, j in enumerate(js)) for js in itertools.product(range(t), repeat=s) if ok(js))


@pytest.mark.parametrize("shape", [(3, 5), (4, 4), (2, 6), (5, 3), (1, 4)])
@pytest.mark.parametrize("strict", [True, False])
def test_pairing_dp_matches_brute_force(gen, shape, strict):
    if strict and shape[0] > shape[1]:
        with pytest.raises(ValueError, match="strictly increasing"):
            best_pairing(torch.rand(*shape, generator=gen), strict=True)
        return
    for _ in range(5):
        c = torch.rand(*shape, generator=gen, dtype=torch.float64)
        pairing = best_pairing(c, strict=strict)
        js = [j for _, j in pairing]
        assert [i for i, _ in pairing] == list(range(shape[0]))
        assert all((a < b) if strict else (a <= b) for a, b in zip(js, js[1:]))
        assert pairing_score(c, pairing) == pytest.approx(brute_force(c, strict), abs=1e-12)


def test_pairing_default_and_uniform():
    c = torch.tensor([[0.9, 0.1, 0.0, 0.0], [0.2, 0.3, 0.8, 0.1]])
    assert best_pairing(c) == [(0, 0), (1, 2)]  # strict when S <= T
    assert uniform_pairing(2, 4) == [(0, 1), (1, 3)]  # relative depth, last with last
    assert pairing_score(c, best_pairing(c)) == pytest.approx(1.7)
