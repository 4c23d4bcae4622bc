import numpy as np
import pytest

from keras_memgeom import FisherMemory
from keras_memgeom import merge

pytestmark = pytest.mark.usefixtures("full_precision")


def _memory(rng, n, shape=(4, 3), zero_fraction=0.0):
    fisher = rng.uniform(0.1, 2.0, shape)
    fisher[rng.uniform(size=shape) < zero_fraction] = 0.0
    return FisherMemory({"w": rng.normal(size=shape)}, {"w": fisher}, n)


def _quadratic(memory, theta):
    return 0.5 * np.sum(
        memory.precision["w"] * (theta - memory.anchor["w"]) ** 2
    )


def test_merge_of_two_quadratics_is_their_sum(rng):
    a, b = _memory(rng, 100), _memory(rng, 300)
    merged = merge([a, b])
    assert merged.num_examples == 400
    p = a.precision["w"] + b.precision["w"]
    np.testing.assert_allclose(merged.precision["w"], p, rtol=1e-5)
    anchor = (
        a.precision["w"] * a.anchor["w"] + b.precision["w"] * b.anchor["w"]
    ) / p
    np.testing.assert_allclose(merged.anchor["w"], anchor, rtol=1e-5)
    # The merged quadratic differs from the sum of the two by a constant only.
    thetas = [rng.normal(size=(4, 3)) for _ in range(3)]
    gaps = [
        _quadratic(a, t) + _quadratic(b, t) - _quadratic(merged, t)
        for t in thetas
    ]
    np.testing.assert_allclose(gaps, gaps[0], rtol=1e-4)
    # ... and its anchor is the minimizer of that sum.
    gradient = a.precision["w"] * (
        merged.anchor["w"] - a.anchor["w"]
    ) + b.precision["w"] * (merged.anchor["w"] - b.anchor["w"])
    np.testing.assert_allclose(gradient, 0.0, atol=1e-3)


def test_decay_scales_older_precision(rng):
    a, b, c = _memory(rng, 10), _memory(rng, 20), _memory(rng, 30)
    merged = merge([a, b, c], decay=0.5)
    expected = (
        0.25 * a.precision["w"] + 0.5 * b.precision["w"] + c.precision["w"]
    )
    np.testing.assert_allclose(merged.precision["w"], expected, rtol=1e-5)


def test_anchor_without_information_is_the_newest(rng):
    a, b = (
        _memory(rng, 10, zero_fraction=1.0),
        _memory(rng, 10, zero_fraction=1.0),
    )
    np.testing.assert_allclose(merge([a, b]).anchor["w"], b.anchor["w"])


def test_online_merge_equals_merge_of_all(rng):
    memories = [_memory(rng, 10 * (k + 1)) for k in range(4)]
    online = memories[0]
    for memory in memories[1:]:
        online = merge([online, memory])
    direct = merge(memories)
    np.testing.assert_allclose(
        online.anchor["w"], direct.anchor["w"], rtol=1e-4
    )
    np.testing.assert_allclose(
        online.precision["w"], direct.precision["w"], rtol=1e-5
    )


def test_bad_merges_are_refused(rng):
    with pytest.raises(ValueError, match="at least one"):
        merge([])
    a = _memory(rng, 10)
    for decay in (0.0, 1.5, float("nan"), float("inf"), "0.5", None):
        with pytest.raises(ValueError, match="decay"):
            merge([a, a], decay=decay)
    with pytest.raises(ValueError, match="FisherMemory"):
        merge([a, "b"])
    other = FisherMemory({"v": np.zeros(2)}, {"v": np.ones(2)}, 5)
    with pytest.raises(ValueError, match="different variables"):
        merge([a, other])


def test_memories_of_different_shapes_are_refused_by_name(rng):
    a = _memory(rng, 10, shape=(4, 3))
    b = _memory(rng, 10, shape=(3, 4))
    with pytest.raises(
        ValueError, match=r"different shapes.*'w'.*\(4, 3\).*\(3, 4\)"
    ):
        merge([a, b])


def _psd(rng, size):
    m = rng.normal(size=(size, size))
    return m @ m.T / size + 0.1 * np.eye(size)


def _kfac_memory(rng, n):
    return FisherMemory(
        {"k": rng.normal(size=(3, 2)), "b": rng.normal(size=2)},
        {},
        n,
        kronecker={"k": ("b", _psd(rng, 4), _psd(rng, 2))},
    )


def _stacked(memory):
    return np.concatenate([memory.anchor["k"], memory.anchor["b"][None]])


@pytest.mark.parametrize("count", [2, 3])
def test_kfac_merge_is_the_closed_form_minimizer_in_any_order(rng, count):
    memories = [_kfac_memory(rng, 10 * (k + 1)) for k in range(count)]
    # The sum of the quadratics n_k vec(W - W_k)^T (A_k (x) G_k) vec(...).
    precisions = [
        m.num_examples * np.kron(m.kronecker["k"].a, m.kronecker["k"].g)
        for m in memories
    ]
    exact = np.linalg.solve(
        sum(precisions),
        sum(p @ _stacked(m).ravel() for p, m in zip(precisions, memories)),
    )
    results = [merge(memories), merge(memories[::-1])]
    if count == 3:
        results.append(merge([memories[1], memories[2], memories[0]]))
    for merged in results:
        np.testing.assert_allclose(
            _stacked(merged).ravel(), exact, rtol=1e-6, atol=1e-8
        )
        block = merged.kronecker["k"]
        np.testing.assert_allclose(
            merged.num_examples * np.kron(block.a, block.g),
            results[0].num_examples
            * np.kron(results[0].kronecker["k"].a, results[0].kronecker["k"].g),
            rtol=1e-8,
        )


def test_diagonal_merge_does_not_depend_on_the_order(rng):
    a, b, c = _memory(rng, 10), _memory(rng, 20), _memory(rng, 30)
    one, other = merge([a, b, c]), merge([c, a, b])
    np.testing.assert_allclose(one.anchor["w"], other.anchor["w"], rtol=1e-6)
    np.testing.assert_allclose(
        one.precision["w"], other.precision["w"], rtol=1e-6
    )


def test_merge_of_one_memory_not_in_a_list_is_refused(rng):
    a = _memory(rng, 10)
    with pytest.raises(
        ValueError, match="list of FisherMemory.*one FisherMemory"
    ):
        merge(a)
    with pytest.raises(ValueError, match=r"str as memories\[1\]"):
        merge([a, "b.memory"])
