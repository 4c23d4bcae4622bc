"""The frontal lobe: parameters kept as working space, emptied of information."""

import keras
import numpy as np
from keras import ops

from keras_memgeom import backend
from keras_memgeom.memory.dense_taps import DenseTaps
from keras_memgeom.memory.likelihood import likelihood_from_loss
from keras_memgeom.utils.checks import check_number

ESTIMATORS = ("empirical", "exact")


@keras.saving.register_keras_serializable(package="keras_memgeom")
class FrontalLobe:
    """Which parameters form the working space, and how hard to empty it.

    Memories pin the parameters that hold information, so after enough tasks
    a small network has no free dimension left. A frontal lobe is a part of
    the network kept free: after each task its information is pushed into
    the rest of the network by the penalty `information_strength * trace(F_FL)`, the
    trace of the diagonal Fisher of the frontal-lobe parameters (for a
    positive semi-definite block the trace is its nuclear norm), and then
    consolidated into long-term memory (see `keras_memgeom.callbacks.Consolidate`).

    The working space is either whole Dense layers (`fraction=None`: their
    kernels and biases) or a fraction of the units of chosen Dense layers:
    the first `round(fraction * units)` units, with their incoming weights,
    biases and outgoing weights (the rows of the kernel of any Dense layer
    that reads the layer's output directly in a functional or `Sequential`
    model).

    The trace is differentiated by double backpropagation: the per-example
    gradients come from one backward pass per output cotangent (the Dense
    tap trick, `||x_b||^2 ||g_b||^2` per unit), and that pass is itself
    differentiated by the training step.

    Args:
        layers: names of Dense layers (called once per forward pass on 2-D
            inputs).
        fraction: `None` for whole layers, or a float in `(0, 1]`: the share
            of each layer's units that forms the working space.
        information_strength: `lambda >= 0`, the weight of the information penalty.
        estimator: `"empirical"` (squared score of the true label: one
            extra backward pass, the cheap proxy) or `"exact"` (expectation
            over the model's predictive distribution: one backward pass per
            output).

    Raises:
        ValueError: for an empty `layers`, a `fraction` outside `(0, 1]`, a
            negative or non-finite `information_strength` or an unknown `estimator`.

    Example:
    >>> frontal_lobe = keras_memgeom.FrontalLobe(
    ...     ["hidden_0", "hidden_1"], fraction=0.5, information_strength=1.0)
    >>> model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    ...               frontal_lobe=frontal_lobe)
    """

    def __init__(
        self,
        layers,
        *,
        fraction=None,
        information_strength=1.0,
        estimator="empirical",
    ):
        if isinstance(layers, str):
            layers = [layers]
        layers = list(layers)
        if not layers or not all(isinstance(name, str) for name in layers):
            raise ValueError(
                f"`layers` must be a non-empty list of layer names; got {layers!r}."
            )
        if fraction is not None:
            fraction = check_number(
                "fraction",
                fraction,
                minimum=0.0,
                inclusive_minimum=False,
                maximum=1.0,
            )
        information_strength = check_number(
            "information_strength", information_strength, minimum=0.0
        )
        if estimator not in ESTIMATORS:
            raise ValueError(
                f"Unknown estimator {estimator!r}; expected one of {ESTIMATORS}."
            )
        self.layers = layers
        self.fraction = fraction
        self.information_strength = information_strength
        self.estimator = estimator
        self._cache = None

    def get_config(self):
        return {
            "layers": list(self.layers),
            "fraction": self.fraction,
            "information_strength": self.information_strength,
            "estimator": self.estimator,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def masks(self, model):
        """The frontal lobe's share of each variable of `model`.

        Args:
            model: a built Keras model holding the named layers.

        Returns:
            A dict from variable path to a float32 numpy array of the
            variable's shape, 1 on frontal-lobe entries and 0 elsewhere, for
            every variable with at least one frontal-lobe entry.

        Raises:
            ValueError: if a name is not a layer of `model`, or the layer is
                not a built Dense layer.
        """
        by_name = {
            layer.name: layer
            for layer in model._flatten_layers(include_self=False)
        }
        masks = {}
        for name in self.layers:
            if name not in by_name:
                raise ValueError(
                    f"Unknown layer {name!r}: the model's layers are {sorted(by_name)}."
                )
            layer = by_name[name]
            if type(layer) is not keras.layers.Dense or not layer.built:
                raise ValueError(
                    f"Layer {name!r} is a {type(layer).__name__}: a frontal lobe is "
                    "made of built Dense layers."
                )
            if self.fraction is None:
                for variable in layer.trainable_variables:
                    masks[variable.path] = np.ones(variable.shape, "float32")
                continue
            units = np.zeros(layer.units, "float32")
            units[: max(1, round(self.fraction * layer.units))] = 1.0
            _add(
                masks, layer.kernel, np.broadcast_to(units, layer.kernel.shape)
            )
            if layer.use_bias:
                _add(masks, layer.bias, units)
            for consumer in _consumers(model, layer):
                _add(
                    masks,
                    consumer.kernel,
                    np.broadcast_to(units[:, None], consumer.kernel.shape),
                )
        return masks

    def fisher_trace(self, model, x, y, sample_weight=None):
        """The frontal lobe's Fisher trace on a batch, differentiably.

        `mean_b sum_{i in FL} F_b[i]`, with `F_b` the per-example diagonal
        Fisher of the chosen estimator (the same numbers as
        `FisherMemory.estimate` with that estimator, summed over the frontal
        lobe). Inside a training step its gradient is taken by the step's
        own autodiff, through the backward pass that forms it.

        Args:
            model: the model, compiled with a log-likelihood loss.
            x: a batch of inputs, `(batch, d)`.
            y: the batch's labels (used by `"empirical"`).
            sample_weight: optional per-example weights `(batch,)`.

        Returns:
            A scalar tensor.

        Raises:
            ValueError: see `masks`, or if a frontal-lobe layer is not called
                exactly once on 2-D inputs.
        """
        taps, masks = self._prepare(model, x)
        likelihood = likelihood_from_loss(getattr(model, "loss", None))
        batch = ops.shape(x)[0]

        def forward(tap_values):
            with taps.active(tap_values) as inputs:
                outputs = model(x, training=False)
            return outputs, list(inputs)

        dtype = taps.layers[0].kernel.dtype
        outputs, inputs, pullback = backend.differentiable_linearize(
            forward, taps.zeros(batch, dtype)
        )
        if self.estimator == "exact":
            cotangents = likelihood.fisher_factors(outputs)
        else:
            labels = likelihood.prepare_labels(y, outputs)
            cotangents = likelihood.score(outputs, labels)[None]
        per_example = 0.0
        grads = pullback(cotangents)
        for (kernel_mask, bias_mask), layer_input, grad in zip(
            masks, inputs, grads
        ):
            squares = ops.sum(ops.square(grad), axis=0)
            if kernel_mask is not None:
                reach = ops.matmul(ops.square(layer_input), kernel_mask)
                per_example = per_example + ops.sum(reach * squares, axis=-1)
            if bias_mask is not None:
                per_example = per_example + ops.matmul(squares, bias_mask)
        if sample_weight is not None:
            per_example = per_example * ops.reshape(
                ops.cast(sample_weight, dtype), (-1,)
            )
        return ops.mean(per_example)

    def split(self, model, values):
        """Sums per-entry values over the frontal lobe and over the rest.

        Args:
            model: the model the values belong to.
            values: a dict from variable path (of `model`) to an array of the
                variable's shape, e.g. a diagonal Fisher.

        Returns:
            `(frontal_lobe_total, rest_total)`, floats.
        """
        masks = self.masks(model)
        inside = outside = 0.0
        for path, value in values.items():
            value = np.asarray(value, "float64")
            mask = masks.get(path, np.zeros(value.shape, "float32"))
            inside += float(np.sum(value * mask))
            outside += float(np.sum(value * (1.0 - mask)))
        return inside, outside

    def _prepare(self, model, x):
        """The taps and the mask tensors per tapped layer of `model` (cached).

        The masks are copied to the device once, not at every step, and are
        made outside any trace, so every traced step can reuse them.
        """
        if self._cache is not None and self._cache[0] is model:
            return self._cache[1:]
        masks = self.masks(model)
        taps = DenseTaps(model).probe(x)
        tapped = {id(v) for v in taps.variables}
        for variable in model.trainable_variables:
            if variable.path in masks and id(variable) not in tapped:
                raise ValueError(
                    f"The frontal lobe holds {variable.path!r}, but its Dense layer is not "
                    "called exactly once on 2-D inputs, so its per-example gradients "
                    "cannot be formed from the tapped backward pass."
                )
        dtype = taps.layers[0].kernel.dtype

        def on_device(path):
            return (
                None
                if path not in masks
                else backend.device_constant(masks[path], dtype)
            )

        layer_masks = [
            (
                on_device(layer.kernel.path),
                on_device(layer.bias.path) if layer.use_bias else None,
            )
            for layer in taps.layers
        ]
        self._cache = (model, taps, layer_masks)
        return self._cache[1:]

    def __repr__(self):
        return (
            f"FrontalLobe({self.layers!r}, fraction={self.fraction}, "
            f"information_strength={self.information_strength}, estimator={self.estimator!r})"
        )


def _add(masks, variable, mask):
    masks[variable.path] = np.maximum(
        masks.get(variable.path, 0.0), mask
    ).astype("float32")


def _consumers(model, layer):
    """Dense layers of `model` whose input is `layer`'s output, directly."""
    out = []
    for other in model._flatten_layers(include_self=False):
        if type(other) is not keras.layers.Dense or other is layer:
            continue
        for node in other._inbound_nodes:
            sources = [t._keras_history.operation for t in node.input_tensors]
            if layer in sources:
                out.append(other)
                break
    return out
