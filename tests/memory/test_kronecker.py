import numpy as np
import pytest

from keras_memgeom.src.memory.kronecker import check_kronecker_factors
from keras_memgeom.src.memory.kronecker import kronecker_effective_dimension
from keras_memgeom.src.memory.kronecker import kronecker_quadratic
from keras_memgeom.src.memory.kronecker import kronecker_sum_minimizer
from keras_memgeom.src.memory.kronecker import merge_anchor
from keras_memgeom.src.memory.kronecker import nearest_kronecker
from keras_memgeom.src.memory.kronecker import permuted_factors

pytestmark = pytest.mark.usefixtures("full_precision")


def _psd(rng, size, rank=None):
    m = rng.normal(size=(size, rank or size))
    return m @ m.T / size


def test_quadratic_equals_the_dense_kronecker_form(rng):
    a, g, delta = _psd(rng, 5), _psd(rng, 3), rng.normal(size=(5, 3))
    dense = delta.ravel() @ np.kron(a, g) @ delta.ravel()
    np.testing.assert_allclose(
        kronecker_quadratic(a, g, delta), dense, rtol=1e-12
    )


@pytest.mark.parametrize("rank", [None, 2], ids=["full", "singular"])
def test_merged_anchor_minimizes_the_exact_sum(rng, rank):
    a1, g1, a2, g2 = (
        _psd(rng, 5),
        _psd(rng, 3),
        _psd(rng, 5, rank),
        _psd(rng, 3),
    )
    t1, t2 = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    merged = merge_anchor((t1, 3.0, a1, g1), (t2, 2.0, a2, g2))
    p1, p2 = 3.0 * np.kron(a1, g1), 2.0 * np.kron(a2, g2)
    exact = np.linalg.solve(p1 + p2, p1 @ t1.ravel() + p2 @ t2.ravel())
    np.testing.assert_allclose(merged.ravel(), exact, rtol=1e-6, atol=1e-7)


def test_directions_no_memory_constrains_keep_the_newer_anchor(rng):
    # Both input factors see only the first two inputs.
    a1, a2 = np.zeros((4, 4)), np.zeros((4, 4))
    a1[:2, :2], a2[:2, :2] = _psd(rng, 2), _psd(rng, 2)
    g = _psd(rng, 3)
    t1, t2 = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    merged = merge_anchor((t1, 1.0, a1, g), (t2, 1.0, a2, g))
    np.testing.assert_allclose(merged[2:], t2[2:], atol=1e-6)


def test_nearest_kronecker_is_the_best_rank_one_rearrangement(rng):
    terms = [
        (3.0, _psd(rng, 4), _psd(rng, 3)),
        (2.0, _psd(rng, 4), _psd(rng, 3)),
    ]
    a, g = nearest_kronecker(terms)
    # Van Loan & Pitsianis: the rearranged sum's leading singular pair.
    rearranged = sum(w * np.outer(x.ravel(), y.ravel()) for w, x, y in terms)
    u, s, vt = np.linalg.svd(rearranged)
    np.testing.assert_allclose(
        np.outer(a.ravel(), g.ravel()),
        s[0] * np.outer(u[:, 0], vt[0]),
        atol=1e-10,
    )
    assert np.linalg.eigvalsh(a).min() > 0 and np.linalg.eigvalsh(g).min() > 0


def test_nearest_kronecker_is_exact_when_one_factor_is_shared(rng):
    a1, a2, g = _psd(rng, 4), _psd(rng, 4, 1), _psd(rng, 3)
    a, g_fit = nearest_kronecker([(1.0, a1, g), (2.0, a2, 0.5 * g)])
    np.testing.assert_allclose(
        np.kron(a, g_fit), np.kron(a1 + a2, g), atol=1e-12
    )


def test_effective_dimension_uses_the_product_eigenvalues(rng):
    a, g = _psd(rng, 4), _psd(rng, 3)
    eigenvalues = 10 * np.linalg.eigvalsh(np.kron(a, g))
    expected = np.sum(eigenvalues / (eigenvalues + 2.0))
    np.testing.assert_allclose(
        kronecker_effective_dimension(a, g, 10, 2.0), expected, rtol=1e-10
    )


# A diagonal input factor (an Embedding's token frequencies) is held as its
# diagonal; the algebra must give what the dense diagonal matrix gives.


def _frequencies(rng, size):
    counts = rng.integers(0, 4, size).astype("float64")
    counts[0] = 0.0  # a token no example holds: no information on its row
    return counts / counts.sum()


def test_a_diagonal_factor_gives_the_dense_quadratic(rng):
    a, g, delta = _frequencies(rng, 6), _psd(rng, 3), rng.normal(size=(6, 3))
    dense = delta.ravel() @ np.kron(np.diag(a), g) @ delta.ravel()
    np.testing.assert_allclose(
        kronecker_quadratic(a, g, delta), dense, rtol=1e-12
    )


def test_diagonal_factors_merge_to_the_exact_minimizer(rng):
    a1, a2 = _frequencies(rng, 6), _frequencies(rng, 6)
    a2[0] = 0.0  # neither memory constrains row 0
    g1, g2 = _psd(rng, 3), _psd(rng, 3)
    t1, t2 = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    merged = merge_anchor((t1, 3.0, a1, g1), (t2, 2.0, a2, g2))
    p1, p2 = 3.0 * np.kron(np.diag(a1), g1), 2.0 * np.kron(np.diag(a2), g2)
    held = slice(3, None)  # the rows of tokens 1 to 5, flattened
    total = (p1 + p2)[held, held]
    exact = np.linalg.solve(total, (p1 @ t1.ravel() + p2 @ t2.ravel())[held])
    np.testing.assert_allclose(merged.ravel()[held], exact, rtol=1e-6)
    np.testing.assert_allclose(merged[0], t2[0])
    # Three terms (conjugate gradients), one with a dense factor.
    a3 = _psd(rng, 6)
    terms = [
        (t1, 3.0, a1, g1),
        (t2, 2.0, a2, g2),
        (rng.normal(size=(6, 3)), 1.0, a3, g1),
    ]
    solution = kronecker_sum_minimizer(terms, t2)
    precisions = [
        w * np.kron(np.diag(a) if a.ndim == 1 else a, g) for _, w, a, g in terms
    ]
    exact = np.linalg.solve(
        sum(precisions),
        sum(p @ t.ravel() for p, (t, _, _, _) in zip(precisions, terms)),
    )
    np.testing.assert_allclose(solution.ravel(), exact, rtol=1e-6)


def test_nearest_kronecker_keeps_diagonal_factors_diagonal(rng):
    terms = [
        (3.0, _frequencies(rng, 5), _psd(rng, 3)),
        (2.0, _frequencies(rng, 5), _psd(rng, 3)),
    ]
    a, g = nearest_kronecker(terms)
    assert a.shape == (5,)
    dense_a, dense_g = nearest_kronecker(
        [(w, np.diag(a), g) for w, a, g in terms]
    )
    np.testing.assert_allclose(np.diag(a), dense_a, atol=1e-12)
    np.testing.assert_allclose(g, dense_g, atol=1e-12)


# Grouped factors: a block per channel over the columns of the kernel
# matrix `(rows, channels * m)`, checked against the block-diagonal
# precision they stand for.
CHANNELS, ROWS, M = 3, 4, 2


def _grouped(rng, size, rank=None):
    return np.stack([_psd(rng, size, rank) for _ in range(CHANNELS)])


def _block_diagonal(a, g):
    """The `(rows * units)^2` precision of grouped `a`, `g`, row-major."""
    channels, rows, _ = a.shape
    m = g.shape[-1]
    dense = np.einsum("cd,cpq,cjk->pcjqdk", np.eye(channels), a, g)
    return dense.reshape(rows * channels * m, rows * channels * m)


def test_a_grouped_block_gives_the_block_diagonal_quadratic(rng):
    a, g = _grouped(rng, ROWS), _grouped(rng, M)
    delta = rng.normal(size=(ROWS, CHANNELS * M))
    dense = delta.ravel() @ _block_diagonal(a, g) @ delta.ravel()
    np.testing.assert_allclose(
        kronecker_quadratic(a, g, delta), dense, rtol=1e-12
    )
    # Per channel, the effective dimension of its own product.
    eigenvalues = np.linalg.eigvalsh(_block_diagonal(a, g))
    precision = 7.0 * np.maximum(eigenvalues, 0.0)
    np.testing.assert_allclose(
        kronecker_effective_dimension(a, g, 7.0, 0.5),
        np.sum(precision / (precision + 0.5)),
        rtol=1e-8,
    )


def test_grouped_blocks_merge_to_the_exact_minimizer(rng):
    terms = [
        (rng.normal(size=(ROWS, CHANNELS * M)), w, _grouped(rng, ROWS), g)
        for w, g in ((3.0, _grouped(rng, M)), (2.0, _grouped(rng, M)))
    ]
    precisions = [w * _block_diagonal(a, g) for _, w, a, g in terms]

    def exact(terms):
        return np.linalg.solve(
            sum(precisions[: len(terms)]),
            sum(p @ t.ravel() for p, (t, _, _, _) in zip(precisions, terms)),
        )

    merged = merge_anchor(*terms)
    np.testing.assert_allclose(merged.ravel(), exact(terms), rtol=1e-6)
    terms.append(
        (
            rng.normal(size=(ROWS, CHANNELS * M)),
            1.0,
            _grouped(rng, ROWS),
            _grouped(rng, M),
        )
    )
    precisions.append(_block_diagonal(*terms[-1][2:]))
    solution = kronecker_sum_minimizer(terms, terms[1][0])
    np.testing.assert_allclose(solution.ravel(), exact(terms), rtol=1e-6)
    # The nearest product, channel by channel.
    a, g = nearest_kronecker([term[1:] for term in terms])
    assert a.shape == (CHANNELS, ROWS, ROWS) and g.shape == (CHANNELS, M, M)
    for c in range(CHANNELS):
        own_a, own_g = nearest_kronecker(
            [(w, a_k[c], g_k[c]) for _, w, a_k, g_k in terms]
        )
        np.testing.assert_allclose(np.kron(a[c], g[c]), np.kron(own_a, own_g))


def test_permuting_channels_moves_their_blocks(rng):
    a, g = _grouped(rng, ROWS), _grouped(rng, M)
    rows = np.array([2, 0, 3, 1])
    channels = np.array([1, 2, 0])
    inner = np.array([[1, 0], [0, 1], [1, 0]])  # per new channel
    columns = (channels[:, None] * M + inner).ravel()
    new_a, new_g = permuted_factors(a, g, rows, columns)
    order = (rows[:, None] * CHANNELS * M + columns).ravel()
    np.testing.assert_allclose(
        _block_diagonal(new_a, new_g),
        _block_diagonal(a, g)[order][:, order],
    )
    with pytest.raises(ValueError, match="mixes the channels"):
        permuted_factors(a, g, rows, np.array([0, 2, 1, 3, 4, 5]))


def test_grouped_factors_are_checked_as_a_pair_and_per_channel(rng):
    a, g = _grouped(rng, ROWS), _grouped(rng, M)
    check_kronecker_factors("k", a, g, ROWS, CHANNELS * M)
    with pytest.raises(ValueError, match="grouped Kronecker factors of k"):
        check_kronecker_factors("k", a, _psd(rng, 6), ROWS, CHANNELS * M)
    with pytest.raises(ValueError, match="grouped Kronecker factors of k"):
        check_kronecker_factors("k", a[:2], g, ROWS, CHANNELS * M)
    g[1] = -g[1]
    with pytest.raises(ValueError, match=r"g \(channel 1\) of k is not"):
        check_kronecker_factors("k", a, g, ROWS, CHANNELS * M)
