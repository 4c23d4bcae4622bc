"""The probabilistic model behind a Keras loss, as the Fisher needs it."""

import keras
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

    Args:
        from_logits: whether the model outputs logits (`True`) or
            probabilities / means (`False`).
    """


    def __init__(self, from_logits=True):
        self.from_logits = from_logits

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
    """Softmax classification: `y` one of `d` classes."""


    def __init__(self, from_logits=True, sparse=True):
        super().__init__(from_logits)
        self.sparse = sparse

    def _probabilities(self, outputs):
        if self.from_logits:
            return ops.softmax(outputs, axis=-1)
        probs = outputs / ops.sum(outputs, axis=-1, keepdims=True)
        return ops.clip(probs, _EPSILON, 1.0)

    def prepare_labels(self, labels, outputs):
        num_classes = outputs.shape[-1]
        if self.sparse:
            labels = ops.reshape(labels, (-1,))
            return ops.one_hot(ops.cast(labels, "int32"), num_classes, dtype=outputs.dtype)
        return ops.cast(labels, outputs.dtype)

    def score(self, outputs, labels):
        probs = self._probabilities(outputs)
        if self.from_logits:
            return labels - probs * ops.sum(labels, axis=-1, keepdims=True)
        return labels / probs

    def draw_noise(self, rng, batch_size, output_dim, num_samples):
        return rng.gumbel(size=self.noise_shape(batch_size, output_dim, num_samples))

    def sample(self, outputs, noise):
        # Gumbel-max: argmax(log p + G) is a draw from p.
        log_probs = ops.log(self._probabilities(outputs))
        labels = ops.argmax(log_probs[None] + ops.cast(noise, outputs.dtype), axis=-1)
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
    """Independent binary outputs (sigmoid / binary cross-entropy)."""


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
        return rng.uniform(size=self.noise_shape(batch_size, output_dim, num_samples))

    def sample(self, outputs, noise):
        probs = self._probabilities(outputs)
        return ops.cast(ops.cast(noise, outputs.dtype) < probs[None], outputs.dtype)

    def fisher_factors(self, outputs):
        probs = self._probabilities(outputs)
        variance = probs * (1.0 - probs)
        scale = ops.sqrt(variance) if self.from_logits else 1.0 / ops.sqrt(variance)
        eye = ops.eye(outputs.shape[-1], dtype=outputs.dtype)[:, None, :]
        return eye * ops.transpose(scale)[:, :, None]


class Gaussian(Likelihood):
    """Unit-variance Gaussian around the output (mean squared error)."""


    def __init__(self, from_logits=False):
        super().__init__(from_logits=False)

    def score(self, outputs, labels):
        return labels - outputs

    def draw_noise(self, rng, batch_size, output_dim, num_samples):
        return rng.standard_normal(self.noise_shape(batch_size, output_dim, num_samples))

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
    "sparsecategoricalcrossentropy": lambda logits: Categorical(logits, sparse=True),
    "categoricalcrossentropy": lambda logits: Categorical(logits, sparse=False),
    "binarycrossentropy": Bernoulli,
    "meansquarederror": Gaussian,
    "mse": Gaussian,
}


def likelihood_from_loss(loss):
    """The likelihood that a Keras loss is the negative log of.

    Args:
        loss: a loss as given to `model.compile`: a string, a
            `keras.losses.Loss` instance or a Keras loss function.

    Returns:
        A `Likelihood`.

    Raises:
        ValueError: if there is no loss, several losses, or a loss that is
            not a log-likelihood the package knows.
    """
    if loss is None:
        raise ValueError(
            "The model has no compiled loss to read the likelihood from: "
            "compile it with a cross-entropy or mean squared error loss, or "
            "pass `likelihood=`."
        )
    make = None if isinstance(loss, (list, tuple, dict)) else _LIKELIHOODS.get(_loss_key(loss))
    if make is None:
        raise ValueError(
            f"Unsupported loss {loss!r}: a Fisher memory needs a single loss "
            "that is a negative log-likelihood (sparse_categorical_crossentropy, "
            "categorical_crossentropy, binary_crossentropy or "
            "mean_squared_error). Pass `likelihood=` for another model."
        )
    # Strings and loss functions mean probabilities, as in Keras.
    return make(bool(getattr(loss, "from_logits", False)))
