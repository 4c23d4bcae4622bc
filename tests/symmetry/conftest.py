import numpy as np
import pytest

from tests.symmetry.symmetry_models import BUILDERS
from tests.symmetry.symmetry_models import randomize


@pytest.fixture(params=sorted(BUILDERS))
def model_and_inputs(request):
    """(model with random weights, random inputs) for each model kind."""
    build, input_shape = BUILDERS[request.param]
    model = randomize(build())
    x = np.random.default_rng(1).normal(size=(16,) + input_shape)
    return model, x.astype("float32")
