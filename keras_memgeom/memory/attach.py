"""Attach memories to any Keras model as weight regularizers, and detach them."""

import numpy as np

from keras_memgeom.memory.fisher_regularizer import FisherRegularizer
from keras_memgeom.memory.merge import merge
from keras_memgeom.memory.penalty import penalty_scale


def attach(model, memory, *, num_train_examples, strength=1.0):
    """Adds a memory's penalty to `model`'s loss, as Keras regularizers.

    Each remembered variable gets a `FisherRegularizer` (kept beside any
    regularizer it already had), so `model.fit` minimizes
    `loss + strength/2 * n/num_train_examples * sum F (theta - anchor)^2`.
    A list of memories adds one such term per memory (EWC); their sum is one
    quadratic, so it is attached as the merged memory plus the constant that
    keeps its value exact. Keras caches traced train functions, so they are
    reset here: the penalty takes effect in the next `fit` even if the model
    was compiled and trained before. The layers' `*_regularizer` attributes
    are set too, so `model.save` keeps the penalty.

    Args:
        model: a built Keras model.
        memory: a `FisherMemory` or a list of them (oldest first).
        num_train_examples: the number of examples the training loss
            averages over.
        strength: `1` is the Bayesian (Laplace) scaling; EWC's lambda.

    Returns:
        The model.

    Raises:
        ValueError: if a memory does not fit the model (the variable is
            named) or the arguments are invalid.

    Example:
    >>> keras_memgeom.attach(model, memory, num_train_examples=len(x_b), strength=100)
    >>> model.fit(x_b, y_b, epochs=5)
    """
    memories = list(memory) if isinstance(memory, (list, tuple)) else [memory]
    for m in memories:
        m.match(model)
    combined = merge(memories)
    scale = penalty_scale(combined.num_examples, num_train_examples, strength)
    anchors, fishers = combined.anchor, combined.fisher
    owners = _regularizer_attributes(model)
    detach(model)
    for path, variable in combined.match(model):
        offset = 0.0
        if len(memories) > 1:
            per_memory = sum(
                m.num_examples * np.sum(m.fisher[path] * m.anchor[path].astype("float64") ** 2)
                for m in memories
            )
            merged = combined.num_examples * np.sum(fishers[path] * anchors[path].astype("float64") ** 2)
            offset = scale / combined.num_examples * (per_memory - merged)
        regularizer = FisherRegularizer(
            anchors[path], fishers[path], scale=scale, offset=offset, base=variable.regularizer
        )
        _set_regularizer(variable, regularizer, owners)
    _reset_traced_functions(model)
    return model


def detach(model):
    """Removes every memory penalty from `model`, keeping other regularizers.

    Args:
        model: a Keras model.

    Returns:
        The model.
    """
    owners = _regularizer_attributes(model)
    for variable in model.trainable_variables:
        if isinstance(variable.regularizer, FisherRegularizer):
            _set_regularizer(variable, variable.regularizer.base, owners)
    _reset_traced_functions(model)
    return model


def attached_regularizers(model):
    """The `(variable, FisherRegularizer)` pairs currently on `model`."""
    return [
        (v, v.regularizer)
        for v in model.trainable_variables
        if isinstance(v.regularizer, FisherRegularizer)
    ]


def _regularizer_attributes(model):
    """Maps each variable to the layer attribute that serializes its regularizer."""
    owners = {}
    for layer in model._flatten_layers(include_self=True):
        for variable in layer._trainable_variables:
            attribute = f"{variable.name}_regularizer"
            if hasattr(layer, attribute):
                owners[id(variable)] = (layer, attribute)
    return owners


def _set_regularizer(variable, regularizer, owners):
    variable.regularizer = regularizer
    if id(variable) in owners:
        layer, attribute = owners[id(variable)]
        setattr(layer, attribute, regularizer)


def _reset_traced_functions(model):
    # Traced steps read the regularizers once, at trace time.
    model.train_function = None
    model.test_function = None
