"""The frontal lobe: parameters kept as working space, emptied of information.

A frontal lobe is a set of units of Dense or Conv2D layers (plain or
pre-pruned): their incoming weights, biases and outgoing weights (the
entries of the next Dense or Conv2D kernels that read them). The
`information_strength * trace(F_FL)` penalty moves information out of it
during training; `silence`, `distill` and `reset` empty it at a task
boundary (see `keras_memgeom.callbacks.Consolidate`).
"""

import keras
import numpy as np
from keras import ops

from keras_memgeom import backend
from keras_memgeom.src.layers.connectivity_mask import MaskedKernelMixin
from keras_memgeom.src.layers.pre_pruned_conv2d import PrePrunedConv2D
from keras_memgeom.src.layers.pre_pruned_dense import PrePrunedDense
from keras_memgeom.src.memory import dense_taps
from keras_memgeom.src.memory.dense_taps import DenseTaps
from keras_memgeom.src.memory.likelihood import Categorical
from keras_memgeom.src.memory.likelihood import likelihood_from_loss
from keras_memgeom.src.utils.checks import check_number
from keras_memgeom.src.utils.checks import check_positive_int

# The Fisher estimators (of `memory.fisher.ESTIMATORS`) whose information
# penalty the frontal lobe computes.
INFORMATION_ESTIMATORS = ("empirical", "exact")

_DENSE = (keras.layers.Dense, PrePrunedDense)
_CONV = (keras.layers.Conv2D, PrePrunedConv2D)
# Layers whose output channel `c` is computed from input channel `c` alone,
# so a unit's outgoing weights can be followed through them.
_CHANNELWISE = (
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.Dropout,
    keras.layers.SpatialDropout2D,
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling2D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalMaxPooling2D,
)


@keras.saving.register_keras_serializable(package="keras_memgeom")
class FrontalLobe:
    """Which units form the working space, and how hard to empty it.

    Memories pin the parameters that hold information, so after enough tasks
    a small network has no free dimension left. A frontal lobe is a part of
    the network kept free. During a task the penalty
    `information_strength * trace(F_FL)`, the trace of the diagonal Fisher
    of the frontal-lobe parameters (for a positive semi-definite block, its
    nuclear norm), pushes its information into the rest of the network; at
    the task boundary `keras_memgeom.callbacks.Consolidate` consolidates the
    task into long-term memory, and can first empty the frontal lobe
    outright (`distill`, `reset`).

    The working space is made of units of Dense or Conv2D layers (also
    `PrePrunedDense` and `PrePrunedConv2D`; a Conv2D unit is a filter):
    all units of the named layers (`fraction=None`) or the first
    `round(fraction * units)` of each. A unit is its incoming weights, its
    bias and its outgoing weights: the rows (input channels) of the kernels
    of the Dense and Conv2D layers that read the layer's output in a
    functional or `Sequential` model, directly or through channel-wise
    layers (activations, dropout, pooling) and `Flatten`.

    The trace is differentiated by double backpropagation: the per-example
    gradients come from one backward pass per output cotangent (the
    `DenseTaps` rule: `||x_b||^2 ||g_b||^2` per Dense unit, im2col for
    Conv2D), and that pass is itself differentiated by the training step.
    The trace is that of the loss's curvature (the Fisher times the loss
    scale `c` of `likelihood_from_loss`), as for memories, so
    `information_strength=1` weighs it like a memory of strength 1.

    Args:
        layers: names of Dense or Conv2D layers, each called once per
            forward pass.
        fraction: `None` for whole layers, or a float in `(0, 1]`: the share
            of each layer's units that forms the working space.
        information_strength: `lambda >= 0`, the weight of the information
            penalty.
        estimator: `"empirical"` (squared score of the true label: one
            extra backward pass, the cheap proxy) or `"exact"` (expectation
            over the model's predictive distribution: one backward pass per
            output).

    Raises:
        ValueError: for an empty `layers`, a `fraction` outside `(0, 1]`, a
            negative or non-finite `information_strength` or an unknown
            `estimator`.

    Example:

    ```python
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(6, activation="relu", name="hidden")(inputs)
    model = keras_memgeom.Model(inputs, keras.layers.Dense(3)(hidden))
    frontal_lobe = keras_memgeom.FrontalLobe(["hidden"], fraction=0.5)
    model.compile(
        "adam",
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        frontal_lobe=frontal_lobe,
    )
    ```
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
                "`layers` must be a non-empty list of layer names; got "
                f"{layers!r}."
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
        if estimator not in INFORMATION_ESTIMATORS:
            raise ValueError(
                f"Unknown estimator {estimator!r}; expected one of "
                f"{INFORMATION_ESTIMATORS}."
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
            variable's shape, 1 on frontal-lobe entries and 0 elsewhere
            (also 0 on the entries a pre-pruned layer masks out), for every
            variable with at least one frontal-lobe entry.

        Raises:
            ValueError: if a name is not a layer of `model`, the layer is
                not a built Dense or channels-last Conv2D layer, or a layer
                reading its output is one whose weights cannot be split by
                input unit.
        """
        masks = {}
        for lobe in self._units(model):
            _add(masks, lobe["layer"].kernel, lobe["kernel"])
            if lobe["bias"] is not None:
                _add(masks, lobe["layer"].bias, lobe["bias"])
            for variable, mask in lobe["outgoing"]:
                _add(masks, variable, mask)
        return masks

    def silence(self, model):
        """Zeroes the frontal lobe's outgoing weights.

        The network then computes what it would without the frontal lobe:
        its units still compute, but nothing reads them.

        Args:
            model: a built Keras model holding the named layers.

        Raises:
            ValueError: see `masks`; if a frontal-lobe layer has no layer
                reading it (its units are outputs of the model).
        """
        for lobe in self._units(model, need_outgoing=True):
            for variable, mask in lobe["outgoing"]:
                _assign(variable, _value(variable) * (1.0 - mask))

    def reset(self, model):
        """Re-initializes the frontal lobe without changing the function.

        The units get fresh incoming weights and biases from their layer's
        initializers and zero outgoing weights (as continual
        backpropagation does), so the network computes exactly what it
        computed with the frontal lobe silenced, and the units can be
        trained again from a fresh start.

        Args:
            model: a built Keras model holding the named layers.

        Raises:
            ValueError: see `silence`.
        """
        self.silence(model)
        for lobe in self._units(model, need_outgoing=True):
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
        self,
        model,
        x,
        *,
        epochs=5,
        batch_size=32,
        learning_rate=1e-3,
        teacher=None,
    ):
        """Trains the network without its frontal lobe to copy its outputs.

        The compress step of Progress & Compress (Schwarz et al. 2018): the
        outputs of the whole network on `x` are the targets; the frontal
        lobe is silenced (its outgoing weights are zeroed and kept at zero
        by a constraint) and the rest of the network is trained by an
        ordinary compiled `fit` to reproduce them, under the penalties of
        the memories attached to the model (the old tasks). For a
        categorical likelihood the loss is the cross-entropy between the
        softmax outputs (the KL divergence up to a constant); otherwise the
        outputs are matched in squared error.

        Args:
            model: a built functional or `Sequential` Keras model, compiled
                with a log-likelihood loss.
            x: the inputs of the task, an array.
            epochs: epochs of distillation.
            batch_size: batch size of distillation.
            learning_rate: Adam's learning rate.
            teacher: `None` to use the model's outputs on `x` now, or those
                outputs computed earlier.

        Returns:
            The `keras.callbacks.History` of the distillation `fit`.

        Raises:
            ValueError: see `silence`; for bad `epochs` or `batch_size`.

        Example:

        ```python
        inputs = keras.Input((4,))
        hidden = keras.layers.Dense(8, activation="relu", name="hidden")(
            inputs
        )
        model = keras_memgeom.Model(inputs, keras.layers.Dense(3)(hidden))
        model.compile(
            "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
        lobe = keras_memgeom.FrontalLobe(["hidden"], fraction=0.5)
        lobe.distill(model, np.ones((16, 4), "float32"), epochs=1)
        ```
        """
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
        lobes = self._units(model, need_outgoing=True)
        self.silence(model)
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

    def fisher_trace(self, model, x, y, sample_weight=None):
        """The frontal lobe's Fisher trace on a batch, differentiably.

        `c * mean_b sum_{i in FL} F_b[i]`, with `F_b` the per-example
        diagonal Fisher of the chosen estimator (the same numbers as
        `FisherMemory.estimate` with that estimator, summed over the frontal
        lobe) and `c` the loss scale of the model's loss. Inside a training
        step its gradient is taken by the step's own autodiff, through the
        backward pass that forms it.

        Args:
            model: the model, compiled with a log-likelihood loss.
            x: a batch of inputs.
            y: the batch's labels (used by `"empirical"`).
            sample_weight: optional per-example weights `(batch,)`.

        Returns:
            A scalar tensor.

        Raises:
            ValueError: see `masks`, or if a frontal-lobe layer (or one that
                reads it) is not called exactly once per forward pass.
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
        # The loss is `c * (-log p)`: its curvature is `c` times the Fisher.
        cotangents = cotangents * float(
            np.sqrt(likelihood.loss_scale(outputs.shape[-1]))
        )
        per_example = 0.0
        grads = pullback(cotangents)
        for layer, shape, (kernel_mask, bias_mask), layer_input, grad in zip(
            taps.layers, taps._output_shapes, masks, inputs, grads
        ):
            if kernel_mask is None and bias_mask is None:
                continue
            if isinstance(layer, keras.layers.Dense):
                squares = ops.sum(ops.square(grad), axis=0)
                if kernel_mask is not None:
                    reach = ops.matmul(ops.square(layer_input), kernel_mask)
                    per_example = per_example + ops.sum(
                        reach * squares, axis=-1
                    )
                if bias_mask is not None:
                    per_example = per_example + ops.matmul(squares, bias_mask)
                continue
            grad = ops.reshape(
                grad, (grad.shape[0], -1, shape[0] * shape[1], shape[2])
            )
            if kernel_mask is not None:
                patches = dense_taps.patches(layer, layer_input, shape)
                kernel = ops.einsum("bpi,kbpo->kbio", patches, grad)
                squares = ops.sum(ops.square(kernel), axis=0)
                per_example = per_example + ops.sum(
                    squares * ops.reshape(kernel_mask, squares.shape[1:]),
                    axis=(1, 2),
                )
            if bias_mask is not None:
                squares = ops.sum(ops.square(ops.sum(grad, axis=2)), axis=0)
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

    def _units(self, model, need_outgoing=False):
        """Per frontal-lobe layer: the layer and the masks of its units."""
        by_name = {
            layer.name: layer
            for layer in model._flatten_layers(include_self=False)
        }
        lobes = []
        for name in self.layers:
            if name not in by_name:
                raise ValueError(
                    f"Unknown layer {name!r}: the model's layers are "
                    f"{sorted(by_name)}."
                )
            layer = by_name[name]
            if not _is_unit_layer(layer) or not layer.built:
                raise ValueError(
                    f"Layer {name!r} is a {type(layer).__name__}: a frontal "
                    "lobe is made of built Dense or channels-last Conv2D "
                    "layers (plain or pre-pruned)."
                )
            size = layer.kernel.shape[-1]
            units = np.zeros(size, "float32")
            count = (
                size if self.fraction is None else round(self.fraction * size)
            )
            units[: max(1, count)] = 1.0
            outgoing = [
                (consumer.kernel, _connected(consumer, mask))
                for consumer, mask in _readers(model, layer, units)
            ]
            if need_outgoing and not outgoing:
                raise ValueError(
                    f"No Dense or Conv2D layer reads frontal-lobe layer "
                    f"{name!r}, so its units cannot be silenced or reset."
                )
            lobes.append(
                {
                    "layer": layer,
                    "kernel": _connected(
                        layer, np.broadcast_to(units, layer.kernel.shape)
                    ),
                    "bias": units if layer.use_bias else None,
                    "outgoing": outgoing,
                }
            )
        return lobes

    def _prepare(self, model, x):
        """The taps and the mask tensors per tapped layer of `model` (cached).

        The masks are copied to the device once, not at every step, and are
        made outside any trace, so every traced step can reuse them.
        """
        if self._cache is not None and self._cache[0] is model:
            return self._cache[1:]
        masks = self.masks(model)
        taps = DenseTaps(model, conv2d=True).probe(x)
        tapped = {id(v) for v in taps.variables}
        for variable in model.trainable_variables:
            if variable.path in masks and id(variable) not in tapped:
                raise ValueError(
                    f"The frontal lobe holds {variable.path!r}, but its layer "
                    "is not called exactly once per forward pass, so its "
                    "per-example gradients cannot be formed from the tapped "
                    "backward pass."
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
            f"information_strength={self.information_strength}, "
            f"estimator={self.estimator!r})"
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


def _is_unit_layer(layer):
    if type(layer) in _DENSE:
        return True
    return (
        type(layer) in _CONV
        and layer.data_format == "channels_last"
        and layer.groups == 1
    )


def _readers(model, layer, units):
    """`(consumer, kernel mask)` for each Dense or Conv2D reading `layer`.

    `units` marks the channels of `layer`'s output; it is followed through
    channel-wise layers and `Flatten` (channels last) to the kernels that
    read those channels.

    Raises:
        ValueError: naming a layer that reads the units but whose weights
            cannot be split by input unit.
    """
    layers = list(model._flatten_layers(include_self=False))
    out = []
    frontier = [(layer, units)]
    while frontier:
        source, channels = frontier.pop()
        for other in layers:
            if other is source or not _reads(other, source):
                continue
            if _is_unit_layer(other) and other.kernel is not None:
                # Input units are the kernel's second-to-last axis for
                # Dense `(in, out)` and Conv2D `(kh, kw, in, out)` alike.
                mask = np.broadcast_to(channels[:, None], other.kernel.shape)
                out.append((other, np.array(mask, "float32")))
            elif isinstance(other, keras.layers.Flatten):
                spatial = int(np.prod(source.output.shape[1:-1]))
                frontier.append((other, np.tile(channels, spatial)))
            elif isinstance(other, _CHANNELWISE):
                frontier.append((other, channels))
            else:
                raise ValueError(
                    f"Layer {other.name!r} ({type(other).__name__}) reads the "
                    f"frontal lobe of {layer.name!r}; a frontal lobe's units "
                    "may be read only by Dense or Conv2D layers, directly or "
                    "through Flatten, activations, dropout or pooling."
                )
    return out


def _reads(layer, source):
    for node in layer._inbound_nodes:
        tensors = [t._keras_history.operation for t in node.input_tensors]
        if source in tensors:
            return True
    return False


def _connected(layer, mask):
    """`mask` without the entries a pre-pruned layer keeps at zero."""
    mask = np.asarray(mask, "float32")
    if isinstance(layer, MaskedKernelMixin):
        mask = mask * ops.convert_to_numpy(layer.mask).astype("float32")
    return np.array(mask, "float32")


def _add(masks, variable, mask):
    masks[variable.path] = np.maximum(
        masks.get(variable.path, 0.0), mask
    ).astype("float32")


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
