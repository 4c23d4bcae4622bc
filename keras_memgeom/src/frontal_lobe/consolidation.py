"""Consolidation operations: empty a frontal lobe at a task boundary.

`silence` zeroes its outgoing weights, `reset` re-initializes it without
changing the network's function, `distill` trains the rest of the network
to do without it. `CONSOLIDATIONS` are what a consolidation does with it.
"""

import warnings

import keras
import numpy as np
from keras import ops

from keras_memgeom.src.frontal_lobe.units import lobe_units
from keras_memgeom.src.memory.likelihood import Categorical
from keras_memgeom.src.memory.likelihood import likelihood_from_loss
from keras_memgeom.src.utils.checks import check_positive
from keras_memgeom.src.utils.checks import check_positive_int

CONSOLIDATIONS = ("keep", "forget", "reset", "distill")


def check_consolidation(
    consolidation, distill_epochs, distill_batch_size, distill_learning_rate
):
    """Checks the consolidation settings of `Consolidate` and its users.

    Args:
        consolidation: one of `CONSOLIDATIONS` (`"merge"`, the old name of
            `"keep"`, is accepted with a `DeprecationWarning`).
        distill_epochs: a positive int.
        distill_batch_size: a positive int.
        distill_learning_rate: a positive number.

    Returns:
        A dict of the four settings by argument name: the consolidation's
        current name, the learning rate as a float.

    Raises:
        ValueError: naming the first setting that is not valid.

    Example:

    ```python
    from keras_memgeom.src.frontal_lobe.consolidation import (
        check_consolidation,
    )

    print(check_consolidation("distill", 5, 32, 1e-3))
    ```
    """
    if consolidation == "merge":
        # Renamed: `merge` is the package's function merging memories.
        warnings.warn(
            "consolidation='merge' is deprecated; use consolidation='keep'.",
            DeprecationWarning,
            stacklevel=3,
        )
        consolidation = "keep"
    if consolidation not in CONSOLIDATIONS:
        raise ValueError(
            f"Unknown consolidation {consolidation!r}; expected one of "
            f"{CONSOLIDATIONS}."
        )
    return dict(
        consolidation=consolidation,
        distill_epochs=check_positive_int("distill_epochs", distill_epochs),
        distill_batch_size=check_positive_int(
            "distill_batch_size", distill_batch_size
        ),
        distill_learning_rate=check_positive(
            "distill_learning_rate", distill_learning_rate
        ),
    )


def silence(frontal_lobe, model):
    """Zeroes the frontal lobe's outgoing weights (`FrontalLobe.silence`)."""
    for lobe in _units(frontal_lobe, model):
        for variable, mask in lobe["outgoing"]:
            _assign(variable, _value(variable) * (1.0 - mask))


def reset(frontal_lobe, model):
    """Re-initializes the frontal lobe (`FrontalLobe.reset`)."""
    silence(frontal_lobe, model)
    for lobe in _units(frontal_lobe, model):
        layer = lobe["layer"]
        kernel = _value(layer.kernel)
        fresh = _fresh(layer.kernel_initializer, kernel)
        _assign(
            layer.kernel,
            kernel * (1.0 - lobe["kernel"]) + fresh * lobe["kernel"],
        )
        if lobe["bias"] is not None:
            bias = _value(layer.bias)
            fresh = _fresh(layer.bias_initializer, bias)
            _assign(
                layer.bias,
                bias * (1.0 - lobe["bias"]) + fresh * lobe["bias"],
            )


def distill(
    frontal_lobe,
    model,
    x,
    *,
    epochs=5,
    batch_size=32,
    learning_rate=1e-3,
    teacher=None,
):
    """Empties the frontal lobe into the rest (`FrontalLobe.distill`)."""
    epochs = check_positive_int("epochs", epochs)
    batch_size = check_positive_int("batch_size", batch_size)
    likelihood = likelihood_from_loss(getattr(model, "loss", None))
    if teacher is None:
        teacher = model.predict(x, batch_size=1024, verbose=0)
    teacher = np.asarray(teacher, "float32")
    if isinstance(likelihood, Categorical):
        if likelihood.from_logits:
            shifted = teacher - teacher.max(axis=-1, keepdims=True)
            teacher = np.exp(shifted)
            teacher /= teacher.sum(axis=-1, keepdims=True)
        loss = keras.losses.CategoricalCrossentropy(
            from_logits=likelihood.from_logits
        )
    else:
        loss = keras.losses.MeanSquaredError()
    lobes = _units(frontal_lobe, model)
    silence(frontal_lobe, model)
    kept = []
    for lobe in lobes:
        for variable, mask in lobe["outgoing"]:
            kept.append((variable, variable.constraint))
            variable.constraint = _KeepZero(mask, variable.constraint)
    # A second model over the same layers: compiling it leaves the
    # model's optimizer, loss and traced steps as they are, and the
    # memories reach it as the variables' regularizers.
    student = keras.Model(model.inputs, model.outputs)
    student.compile(keras.optimizers.Adam(learning_rate), loss)
    try:
        return student.fit(
            x,
            teacher,
            epochs=epochs,
            batch_size=batch_size,
            shuffle=True,
            verbose=0,
        )
    finally:
        for variable, constraint in kept:
            variable.constraint = constraint


def _units(frontal_lobe, model):
    return lobe_units(
        model, frontal_lobe.layers, frontal_lobe.fraction, need_outgoing=True
    )


class _KeepZero(keras.constraints.Constraint):
    """Keeps the masked entries of a variable at zero after every update."""

    def __init__(self, mask, base=None):
        self.keep = 1.0 - np.asarray(mask, "float32")
        self.base = base

    def __call__(self, w):
        if self.base is not None:
            w = self.base(w)
        return ops.multiply(w, ops.cast(self.keep, w.dtype))


def _value(variable):
    return ops.convert_to_numpy(variable.value).astype("float32")


def _assign(variable, value):
    variable.assign(value.astype(variable.dtype))


def _fresh(initializer, like):
    # A Keras initializer draws the same values at every call; a fresh seed
    # (from NumPy's generator, which `keras.utils.set_random_seed` seeds)
    # gives new ones.
    config = initializer.get_config()
    if "seed" in config:
        config["seed"] = int(np.random.randint(2**31 - 1))
        initializer = type(initializer).from_config(config)
    return ops.convert_to_numpy(initializer(like.shape, dtype="float32"))
