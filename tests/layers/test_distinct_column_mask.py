import keras
import numpy as np
import pytest

from keras_memgeom.pruning import distinct_column_mask


def _assert_valid(mask, shape):
    assert mask.shape == shape
    assert mask.dtype == np.float32
    assert set(np.unique(mask)) <= {0.0, 1.0}
    columns = {tuple(column) for column in mask.T}
    assert len(columns) == shape[1], "columns are not pairwise distinct"
    assert mask.any(axis=0).all(), "a column is all zero"


@pytest.mark.parametrize(
    "shape", [(3, 7), (4, 15), (5, 20), (8, 40), (64, 128), (10, 300), (2, 1)]
)
def test_columns_distinct_and_non_empty(shape):
    for zero_rate in (0.1, 0.5, 0.9):
        for seed in range(5):
            _assert_valid(distinct_column_mask(shape, zero_rate, seed), shape)


def test_at_capacity_every_non_empty_pattern_once():
    # 4 rows give 15 non-empty patterns; a skewed rate still reaches all.
    mask = distinct_column_mask((4, 15), zero_rate=0.95, seed=0)
    codes = sorted(int("".join(str(int(b)) for b in c), 2) for c in mask.T)
    assert codes == list(range(1, 16))


def test_zero_rate_is_respected_on_average():
    mask = distinct_column_mask((256, 256), zero_rate=0.3, seed=0)
    assert abs(1.0 - mask.mean() - 0.3) < 0.01


def test_seed_reproducible_and_seeds_differ():
    a = distinct_column_mask((16, 32), 0.5, seed=3)
    np.testing.assert_array_equal(
        a, distinct_column_mask((16, 32), 0.5, seed=3)
    )
    assert not np.array_equal(a, distinct_column_mask((16, 32), 0.5, seed=4))


def test_no_seed_follows_keras_global_seed():
    keras.utils.set_random_seed(7)
    a = distinct_column_mask((16, 32), 0.5)
    keras.utils.set_random_seed(7)
    np.testing.assert_array_equal(a, distinct_column_mask((16, 32), 0.5))


@pytest.mark.parametrize("zero_rate", [0.0, 1.0, -0.2, 1.5])
def test_zero_rate_outside_open_interval_raises(zero_rate):
    with pytest.raises(ValueError, match="zero_rate"):
        distinct_column_mask((8, 8), zero_rate)


@pytest.mark.parametrize(
    "zero_rate, message",
    [
        ("0.5", "must be a number; got '0.5'"),
        (None, "must be a number"),
        (float("nan"), "must be finite"),
    ],
)
def test_zero_rate_that_is_not_a_number_is_named(zero_rate, message):
    with pytest.raises(ValueError, match=f"`zero_rate` {message}"):
        distinct_column_mask((8, 8), zero_rate)


def test_too_few_rows_raises():
    with pytest.raises(ValueError, match="8 distinct non-empty columns from 3"):
        distinct_column_mask((3, 8), 0.5)


@pytest.mark.parametrize("shape", [(8,), (0, 3), (2.5, 3)])
def test_bad_shape_raises(shape):
    with pytest.raises(ValueError, match="shape"):
        distinct_column_mask(shape, 0.5)
