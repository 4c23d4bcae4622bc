"""The probabilistic model behind a Keras loss, as the Fisher needs it."""

import warnings

import keras
import numpy as np
from keras import ops

_EPSILON = 1e-7


class Likelihood:
    """The distribution `p(y | output)` that a model's output parameterizes.

    The Fisher estimators need three things from it, all in output space:
    the score of a label, labels drawn from the model, and a square root of
    the output-space Fisher (`K` cotangents `u_k` with
    `sum_k u_k u_k^T = E_y[score score^T]`), so that the exact Fisher of any
    parameter is `sum_k (J^T u_k)^2` for the output Jacobian `J`.

    Outputs are `(batch, d)`. Subclasses fix the family; `from_logits` says
    whether the output is the natural parameter or the mean.

    The training loss need not be the negative log-likelihood itself: Keras's
    `mean_squared_error` and `binary_crossentropy` average over the `d`
    outputs, so their per-example loss is `c * (-log p)` with `c = 2 / d`
    (unit-variance Gaussian) and `c = 1 / d` (Bernoullis). The memory needs
    the curvature of the loss that is trained, so every cotangent is scaled
    by `sqrt(loss_scale(d))`; then `strength = 1` is Bayes for every loss.

    Args:
        from_logits: whether the model outputs logits (`True`) or
            probabilities / means (`False`).
        keras_loss: whether the per-example training loss is Keras's loss for
            this family (`mean_squared_error`, `binary_crossentropy`: a mean
            over the outputs) rather than the negative log-likelihood.

    Raises:
        NotImplementedError: from the family's methods, on the base class
            itself.

    Example:

    ```python
    import numpy as np

    import keras_memgeom

    likelihood = keras_memgeom.memory.Categorical(from_logits=True)
    outputs = np.zeros((2, 3), "float32")
    labels = likelihood.prepare_labels(np.array([0, 2]), outputs)
    print(likelihood.score(outputs, labels))  # labels - softmax(outputs)
    ```
    """

    # The Keras loss of the family, summed over outputs, per unit of NLL.
    _loss_per_nll = 1.0
    # Whether the Keras loss of the family averages over the output axis.
    _mean_over_outputs = False

    def __init__(self, from_logits=True, keras_loss=False):
        self.from_logits = from_logits
        self.keras_loss = keras_loss

    def loss_scale(self, output_dim):
        """`c` such that the per-example training loss is `c * (-log p)`.

        Args:
            output_dim: `d`, the number of outputs.

        Returns:
            A positive float: `1` for the negative log-likelihood itself.
        """
        if not self.keras_loss:
            return 1.0
        if self._mean_over_outputs:
            return self._loss_per_nll / output_dim
        return self._loss_per_nll

    def check_labels(self, labels, output_dim):
        """Checks host labels as Keras's loss would read them.

        Args:
            labels: a numpy array, one row per example.
            output_dim: `d`, the number of outputs.

        Returns:
            The labels as a numpy array of shape `(batch, d)`; 1-D labels of
            a one-output model get their output axis, as in `model.fit`.

        Raises:
            ValueError: if the labels do not have the outputs' shape.
        """
        labels = np.asarray(labels)
        if labels.ndim == 1 and output_dim == 1:
            labels = labels[:, None]
        if labels.shape[1:] != (output_dim,):
            raise ValueError(
                f"Labels of shape {labels.shape} do not fit a model with "
                f"{output_dim} outputs: expected shape (N, {output_dim})."
            )
        return labels

    def output_checks(self, outputs):
        """Device scalars that `check_outputs` reads (none by default)."""
        return []

    def check_outputs(self, values):
        """Warns when outputs read as probabilities plainly are not."""

    def score(self, outputs, labels):
        """`d log p(labels | outputs) / d outputs`, shape `(batch, d)`."""
        raise NotImplementedError

    def sample(self, outputs, noise):
        """Labels drawn from the model, from host-made `noise`."""
        raise NotImplementedError

    def noise_shape(self, batch_size, output_dim, num_samples):
        """Shape of the noise `sample` takes for `num_samples` draws."""
        return (num_samples, batch_size, output_dim)

    def draw_noise(self, rng, batch_size, output_dim, num_samples):
        """Noise from a numpy generator, identical on every backend."""
        raise NotImplementedError

    def fisher_factors(self, outputs):
        """The stack `(K, batch, d)` of square-root Fisher cotangents."""
        raise NotImplementedError

    def prepare_labels(self, labels, outputs):
        """Labels in the output's layout (one-hot for sparse classes)."""
        return ops.cast(labels, outputs.dtype)


class Categorical(Likelihood):
    """Softmax classification: `y` one of `d` classes.

    Args:
        from_logits: whether the model outputs logits (`True`) or class
            probabilities (`False`).
        sparse: whether labels are class indices (`True`) or one-hot rows.
        keras_loss: whether the training loss is Keras's cross-entropy (the same
            as the negative log-likelihood for this family).

    Raises:
        ValueError: from `check_labels`, if labels have the wrong shape, are
            not whole numbers, or are out of range (the label is named).

    Example:

    ```python
    import keras
    import numpy as np

    import keras_memgeom

    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile("adam", "sparse_categorical_crossentropy")
    likelihood = keras_memgeom.memory.Categorical(from_logits=True)
    memory = keras_memgeom.FisherMemory.estimate(
        model, (x, np.arange(32) % 3), likelihood=likelihood
    )
    ```
    """

    def __init__(self, from_logits=True, sparse=True, keras_loss=False):
        super().__init__(from_logits, keras_loss)
        self.sparse = sparse

    def check_labels(self, labels, output_dim):
        labels = np.asarray(labels)
        if not self.sparse:
            if labels.ndim < 2 or labels.shape[1:] != (output_dim,):
                raise ValueError(
                    "categorical_crossentropy expects one-hot labels of shape "
                    f"(N, {output_dim}); got labels of shape {labels.shape}. "
                    "For integer class labels use "
                    "sparse_categorical_crossentropy."
                )
            return labels
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 1:
            raise ValueError(
                "sparse_categorical_crossentropy expects integer class labels "
                f"of shape (N,) or (N, 1); got labels of shape {labels.shape}. "
                "For one-hot labels use categorical_crossentropy (or take "
                "their argmax)."
            )
        if labels.size and not np.all(np.mod(labels, 1) == 0):
            raise ValueError(
                "sparse_categorical_crossentropy expects integer class labels; "
                "got the non-integer label "
                f"{labels[np.mod(labels, 1) != 0][0].item()!r}."
            )
        bad = labels[(labels < 0) | (labels >= output_dim)]
        if bad.size:
            raise ValueError(
                f"Label {bad[0].item()!r} is out of range for {output_dim} "
                f"classes: labels must be in [0, {output_dim - 1}] (labels "
                "counted from 1 must be shifted down by one)."
            )
        return labels

    def output_checks(self, outputs):
        if self.from_logits:
            return []
        total = ops.sum(outputs, axis=-1)
        return [ops.min(outputs), ops.max(ops.abs(total - 1.0))]

    def check_outputs(self, values):
        if values and (values[0] < 0 or values[1] > 1e-3):
            _warn_not_probabilities(
                "categorical cross-entropy",
                "rows that are negative or do not sum to 1",
            )

    def _probabilities(self, outputs):
        if self.from_logits:
            return ops.softmax(outputs, axis=-1)
        probs = outputs / ops.sum(outputs, axis=-1, keepdims=True)
        return ops.clip(probs, _EPSILON, 1.0)

    def prepare_labels(self, labels, outputs):
        num_classes = outputs.shape[-1]
        if self.sparse:
            labels = ops.reshape(labels, (-1,))
            return ops.one_hot(
                ops.cast(labels, "int32"), num_classes, dtype=outputs.dtype
            )
        return ops.cast(labels, outputs.dtype)

    def score(self, outputs, labels):
        probs = self._probabilities(outputs)
        if self.from_logits:
            return labels - probs * ops.sum(labels, axis=-1, keepdims=True)
        return labels / probs

    def draw_noise(self, rng, batch_size, output_dim, num_samples):
        return rng.gumbel(
            size=self.noise_shape(batch_size, output_dim, num_samples)
        )

    def sample(self, outputs, noise):
        # Gumbel-max: argmax(log p + G) is a draw from p.
        log_probs = ops.log(self._probabilities(outputs))
        labels = ops.argmax(
            log_probs[None] + ops.cast(noise, outputs.dtype), axis=-1
        )
        return ops.one_hot(labels, outputs.shape[-1], dtype=outputs.dtype)

    def fisher_factors(self, outputs):
        probs = self._probabilities(outputs)
        eye = ops.eye(outputs.shape[-1], dtype=outputs.dtype)[:, None, :]
        if self.from_logits:
            # u_c = sqrt(p_c) (e_c - p): sum_c u_c u_c^T = diag(p) - p p^T.
            root = ops.transpose(ops.sqrt(probs))[:, :, None]
            return root * (eye - probs[None])
        # u_c = e_c / sqrt(q_c): sum_c u_c u_c^T = diag(1 / q).
        return eye / ops.transpose(ops.sqrt(probs))[:, :, None]


class Bernoulli(Likelihood):
    """Independent binary outputs (sigmoid / binary cross-entropy).

    Args:
        from_logits: whether the model outputs logits (`True`) or
            probabilities (`False`).
        keras_loss: whether the training loss is Keras's `binary_crossentropy`
            (a mean over the outputs) rather than the negative log-likelihood.

    Raises:
        ValueError: from `check_labels`, if labels do not have the outputs'
            shape.

    Example:

    ```python
    import keras
    import numpy as np

    import keras_memgeom

    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile("adam", "binary_crossentropy")
    likelihood = keras_memgeom.memory.Bernoulli(keras_loss=True)
    memory = keras_memgeom.FisherMemory.estimate(
        model, (x, np.ones((32, 2))), likelihood=likelihood
    )
    ```
    """

    _mean_over_outputs = True

    def output_checks(self, outputs):
        if self.from_logits:
            return []
        return [ops.min(outputs), ops.max(outputs)]

    def check_outputs(self, values):
        if values and (values[0] < 0 or values[1] > 1):
            _warn_not_probabilities(
                "binary cross-entropy", "values outside [0, 1]"
            )

    def _probabilities(self, outputs):
        if self.from_logits:
            return ops.sigmoid(outputs)
        return ops.clip(outputs, _EPSILON, 1.0 - _EPSILON)

    def score(self, outputs, labels):
        probs = self._probabilities(outputs)
        if self.from_logits:
            return labels - probs
        return labels / probs - (1.0 - labels) / (1.0 - probs)

    def draw_noise(self, rng, batch_size, output_dim, num_samples):
        return rng.uniform(
            size=self.noise_shape(batch_size, output_dim, num_samples)
        )

    def sample(self, outputs, noise):
        probs = self._probabilities(outputs)
        return ops.cast(
            ops.cast(noise, outputs.dtype) < probs[None], outputs.dtype
        )

    def fisher_factors(self, outputs):
        probs = self._probabilities(outputs)
        variance = probs * (1.0 - probs)
        scale = (
            ops.sqrt(variance) if self.from_logits else 1.0 / ops.sqrt(variance)
        )
        eye = ops.eye(outputs.shape[-1], dtype=outputs.dtype)[:, None, :]
        return eye * ops.transpose(scale)[:, :, None]


class Gaussian(Likelihood):
    """Unit-variance Gaussian around the output (mean squared error).

    Args:
        from_logits: ignored: the output is the mean.
        keras_loss: whether the training loss is Keras's `mean_squared_error`
            (a mean over the outputs) rather than the negative log-likelihood.

    Raises:
        ValueError: from `check_labels`, if labels do not have the outputs'
            shape.

    Example:

    ```python
    import keras
    import numpy as np

    import keras_memgeom

    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile("adam", "mean_squared_error")
    likelihood = keras_memgeom.memory.Gaussian(keras_loss=True)
    memory = keras_memgeom.FisherMemory.estimate(
        model, (x, np.zeros((32, 2))), likelihood=likelihood
    )
    ```
    """

    # (1/d) sum (y - f)^2 = (2/d) * [1/2 sum (y - f)^2].
    _loss_per_nll = 2.0
    _mean_over_outputs = True

    def __init__(self, from_logits=False, keras_loss=False):
        super().__init__(from_logits=False, keras_loss=keras_loss)

    def score(self, outputs, labels):
        return labels - outputs

    def draw_noise(self, rng, batch_size, output_dim, num_samples):
        return rng.standard_normal(
            self.noise_shape(batch_size, output_dim, num_samples)
        )

    def sample(self, outputs, noise):
        return outputs[None] + ops.cast(noise, outputs.dtype)

    def fisher_factors(self, outputs):
        eye = ops.eye(outputs.shape[-1], dtype=outputs.dtype)[:, None, :]
        return eye + ops.zeros_like(outputs)[None]


def _loss_key(loss):
    if isinstance(loss, str):
        name = loss
    elif isinstance(loss, keras.losses.Loss):
        name = type(loss).__name__
    else:
        name = getattr(loss, "__name__", type(loss).__name__)
    return name.lower().replace("_", "")


_LIKELIHOODS = {
    "sparsecategoricalcrossentropy": lambda logits: Categorical(
        logits, sparse=True, keras_loss=True
    ),
    "categoricalcrossentropy": lambda logits: Categorical(
        logits, sparse=False, keras_loss=True
    ),
    "binarycrossentropy": lambda logits: Bernoulli(logits, keras_loss=True),
    "meansquarederror": lambda logits: Gaussian(keras_loss=True),
    "mse": lambda logits: Gaussian(keras_loss=True),
}

# Reductions that average the per-example loss over the batch, which the
# penalty's `1 / num_train_examples` assumes.
_BATCH_MEAN_REDUCTIONS = ("sum_over_batch_size", "mean")


def _warn_not_probabilities(loss, problem):
    warnings.warn(
        f"The model is compiled with {loss} on probabilities, but its outputs "
        f"have {problem}: they look like logits. Compile the loss with "
        "`from_logits=True`, or the Fisher is wrong.",
        stacklevel=4,
    )


def likelihood_from_loss(loss):
    """The likelihood that a Keras loss is the negative log of.

    Args:
        loss: a loss as given to `model.compile`: a string, a
            `keras.losses.Loss` instance or a Keras loss function.

    Keras's `mean_squared_error` and `binary_crossentropy` average over the
    outputs; the likelihood knows it (`keras_loss=True`) and scales the
    Fisher to the curvature of the loss actually trained.

    Returns:
        A `Likelihood`.

    Raises:
        ValueError: if there is no loss, several losses, a loss that is not a
            log-likelihood the package knows, or a reduction other than a
            mean over the batch.

    Example:

    ```python
    import keras

    import keras_memgeom

    likelihood = keras_memgeom.memory.likelihood_from_loss(
        keras.losses.BinaryCrossentropy(from_logits=True)
    )
    print(type(likelihood).__name__, likelihood.loss_scale(4))  # Bernoulli 0.25
    ```
    """
    if loss is None:
        raise ValueError(
            "The model has no compiled loss to read the likelihood from: "
            "compile it with a cross-entropy or mean squared error loss, or "
            "pass `likelihood=`."
        )
    make = (
        None
        if isinstance(loss, (list, tuple, dict))
        else _LIKELIHOODS.get(_loss_key(loss))
    )
    if make is None:
        raise ValueError(
            f"Unsupported loss {loss!r}: a Fisher memory needs a single loss "
            "that is a negative log-likelihood "
            "(sparse_categorical_crossentropy, categorical_crossentropy, "
            "binary_crossentropy or mean_squared_error). Pass `likelihood=` "
            "for another model."
        )
    # Strings and loss functions average over the batch, as in Keras.
    reduction = getattr(loss, "reduction", "sum_over_batch_size")
    if reduction not in _BATCH_MEAN_REDUCTIONS:
        raise ValueError(
            f"Unsupported loss reduction {reduction!r}: a Fisher memory's "
            "penalty assumes the loss is averaged over the batch; compile the "
            "loss with reduction='sum_over_batch_size' (the default)."
        )
    # Strings and loss functions mean probabilities, as in Keras.
    return make(bool(getattr(loss, "from_logits", False)))
