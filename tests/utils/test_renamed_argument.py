import warnings

import pytest

from keras_memgeom.src.utils.renamed_argument import renamed_argument


def _function(max_examples=1000, fisher_examples=None):
    return renamed_argument(
        "max_examples",
        max_examples,
        "fisher_examples",
        fisher_examples,
        default=1000,
    )


def test_the_new_name_alone_passes_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _function() == 1000
        assert _function(max_examples=7) == 7


def test_the_old_name_warns_naming_the_new_one_at_the_caller():
    with pytest.warns(DeprecationWarning, match="use `max_examples`") as got:
        assert _function(fisher_examples=7) == 7
    # The warning points at the code that passed the old name.
    assert got[0].filename == __file__


def test_both_names_are_refused_naming_both():
    with pytest.raises(ValueError, match="`max_examples`.*`fisher_examples`"):
        _function(max_examples=5, fisher_examples=7)
