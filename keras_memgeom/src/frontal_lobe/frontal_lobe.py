"""The frontal lobe: parameters kept as working space, emptied of information.

A frontal lobe is a set of units of Dense or Conv2D layers (plain or
pre-pruned): their incoming weights, biases and outgoing weights (the
entries of the next Dense or Conv2D kernels that read them). The
`information_strength * trace(F_FL)` penalty moves information out of it
during training; `silence`, `distill` and `reset` empty it at a task
boundary (see `keras_memgeom.frontal_lobe.Consolidate`).
"""

import keras
import numpy as np

from keras_memgeom.src.frontal_lobe import consolidation
from keras_memgeom.src.frontal_lobe import penalty
from keras_memgeom.src.frontal_lobe.units import lobe_units
from keras_memgeom.src.utils.checks import check_number
from keras_memgeom.src.utils.checks import check_positive

# The Fisher estimators (of `memory.fisher.ESTIMATORS`) whose information
# penalty the frontal lobe computes.
INFORMATION_ESTIMATORS = ("empirical", "exact")


@keras.saving.register_keras_serializable(package="keras_memgeom")
class FrontalLobe:
    """Which units form the working space, and how hard to empty it.

    Memories pin the parameters that hold information, so after enough tasks
    a small network has no free dimension left. A frontal lobe is a part of
    the network kept free. During a task the penalty
    `information_strength * trace(F_FL)`, the trace of the diagonal Fisher
    of the frontal-lobe parameters (for a positive semi-definite block, its
    nuclear norm), pushes its information into the rest of the network; at
    the task boundary `keras_memgeom.frontal_lobe.Consolidate` consolidates the
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
            fraction = check_positive("fraction", fraction, maximum=1.0)
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
        for lobe in lobe_units(model, self.layers, self.fraction):
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
        consolidation.silence(self, model)

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
        consolidation.reset(self, model)

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
        return consolidation.distill(
            self,
            model,
            x,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            teacher=teacher,
        )

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
        return penalty.fisher_trace(self, model, x, y, sample_weight)

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

    def __repr__(self):
        return (
            f"FrontalLobe({self.layers!r}, fraction={self.fraction}, "
            f"information_strength={self.information_strength}, "
            f"estimator={self.estimator!r})"
        )


def _add(masks, variable, mask):
    masks[variable.path] = np.maximum(
        masks.get(variable.path, 0.0), mask
    ).astype("float32")
