"""The per-example Fisher of a Keras model, diagonal or Kronecker-factored."""

import math
import warnings
import weakref

import keras
import numpy as np
from keras import ops
from keras.src.backend.common.masking import get_keras_mask

from keras_memgeom import backend
from keras_memgeom.src.layers.connectivity_mask import MaskedKernelMixin
from keras_memgeom.src.memory.layer_taps import LayerTaps
from keras_memgeom.src.memory.likelihood import likelihood_from_loss
from keras_memgeom.src.memory.loss_units import loss_units
from keras_memgeom.src.utils.batches import iterate_batches
from keras_memgeom.src.utils.checks import check_finite_data
from keras_memgeom.src.utils.checks import check_positive_int

ESTIMATORS = ("exact", "sampled", "empirical", "batched")
STRUCTURES = ("diagonal", "kfac")

# Compiled per-batch steps, reused across calls on the same model: weights
# are arguments, so only the architecture, the estimator and the input
# shapes (less the batch axis) key a step.
_STEPS = weakref.WeakKeyDictionary()


def estimate_fisher(
    model,
    data,
    *,
    estimator="exact",
    num_samples=1,
    max_examples=None,
    batch_size=256,
    likelihood=None,
    seed=0,
    structure="diagonal",
):
    """Estimates the per-example mean Fisher of `model` on `data`.

    Estimators, as the field names them:
    - `exact`: `E_x sum_c p(c|x) (d log p(c|x) / d theta)^2`, the expectation
      over the model's own predictive distribution;
    - `sampled`: labels drawn from the model, `num_samples` per example
      (Monte Carlo Fisher);
    - `empirical`: the squared score of the true label;
    - `batched`: the squared gradient of each mini-batch mean, times the batch
      size (biased; offered only to compare).

    Layers with a per-example rule (`layer_taps`: Dense, EinsumDense and so
    MultiHeadAttention, channels-last Conv1D, Conv2D (grouped too),
    DepthwiseConv2D and SeparableConv2D, Embedding, keras-hub's
    PositionEmbedding, LayerNormalization, inference BatchNormalization and
    RMS normalizations),
    called once per forward pass, are fast: their
    squared per-example gradients come from one backward pass per
    output-space cotangent (one for `empirical`, `num_samples` for
    `sampled`, the output dimension for `exact`). All other trainable
    variables (recurrent and custom layers, layers called several times)
    use per-example gradients vectorized over the batch with the backend's
    `vmap`. Non-trainable variables (moving statistics) never enter.

    Per-token outputs `(batch, positions, d)` (a softmax over a vocabulary
    at every position, or a regression per position) count every unmasked
    position as one unit, as Keras's losses average over them: the Fisher
    is a mean per token and the count returned (the memory's `n`) is the
    number of tokens, so that `num_train_examples` counted in tokens keeps
    `strength=1` the Bayesian scaling. Positions are masked by the
    output's Keras mask (e.g. `Embedding(mask_zero=True)` or `Masking`);
    sample weights (per example or per position, the third element of the
    data) weigh each unit's Fisher as they weigh its loss. The labels of
    the positions are independent given the inputs, so the `exact` Fisher
    of a sequence is the sum of its positions' (one pullback per position
    and output); `sampled` and `empirical` pull back the sum of the
    positions' scores.

    Before the first batch, the memory a step needs per example is
    estimated; batches larger than what fits in half of the device's free
    memory (`backend.free_memory`) are computed in parts, with the same sums.

    Args:
        model: a built Keras model with a single `(batch, d)` output, or
            `(batch, positions, d)` per-token outputs.
        data: what `model.fit` accepts: `(x, y)` or `(x, y, sample_weight)`
            arrays, a `tf.data.Dataset`, a `keras.utils.PyDataset` or an
            iterable of such batches.
        estimator: one of `ESTIMATORS`.
        num_samples: labels drawn per example by `sampled`.
        max_examples: use at most this many examples.
        batch_size: batch size for arrays.
        likelihood: a `Likelihood`; by default the one behind the compiled
            loss, scaled so that the Fisher is the curvature of the loss
            (Keras's `mean_squared_error` is `2/d` times the Gaussian
            negative log-likelihood, `binary_crossentropy` `1/d` times).
        seed: seed of the labels drawn by `sampled`, identical on every
            backend; an example's label depends only on its position in
            the data (see `sampled_noise`), so batch sizes, devices and
            processes do not change the draw.
        structure: `"diagonal"`, or `"kfac"`: Kronecker factors `A (x) G`
            (Martens & Grosse 2015; Grosse & Martens 2016 for Conv2D) for
            every Dense, Conv1D and Conv2D layer the fast path covers, both
            steps of every SeparableConv2D, and every EinsumDense
            that is a matmul of the input's last axes into the kernel's
            last axes (a Dense at every position: all four projections of
            MultiHeadAttention), and every Embedding (a Dense on one-hot
            tokens, its `A` the diagonal of their frequencies, kept as a
            1-D array) and keras-hub PositionEmbedding (the same, of
            positions), and every DepthwiseConv2D and grouped Conv2D (a block
            per channel or group, grouped factors), from the same backward
            passes (the exact, sampled and empirical estimators; `A` and `G` are
            batch sums, so the cost is one pass over the data), and the diagonal
            for
            every other variable, which a
            warning lists. A layer applied at several positions (a
            sequence, an image) gets the K-FAC-expand factors of
            Eschenhagen et al. (2023), "Kronecker-Factored Approximate
            Curvature for Modern Neural Network Architectures": every
            position counts as an input, `A` is the mean of `a a^T` over
            examples and positions, `G` the sum of `g g^T` over positions
            averaged over units; exact for one example at one position.
            Masked and zero-weight units enter neither factor, nor do the
            positions a layer shares with them (a layer applied at every
            token of per-token outputs), nor, for any other layer, the
            examples with no counted unit.

    Labels are checked on the host as Keras's losses read them, and the
    outputs of the first batch are checked to be probabilities when the loss
    says so (a warning names `from_logits=True` otherwise). Sums stay on the
    device until the end: no host round trip per batch. Under a
    `keras.distribution` (jax) or a `tf.distribute` strategy, every device
    computes its share of each batch and keeps its own sums, reduced across
    devices once (`backend.batch_step`); on several jax processes each
    passes its own rows of every global batch.

    Returns:
        `(fisher, num_examples)`: a dict from variable path to a float32 numpy
        array, and the number of units it averages over: the unmasked
        examples, or the unmasked tokens of per-token outputs. With
        `structure="kfac"`, `(fisher, num_examples, kronecker)`: `fisher`
        then covers the variables outside Kronecker blocks, and `kronecker`
        maps each kernel's path to `(bias_path or None, A, G, mask or
        None)`, `A` a mean over the counted inputs, `G` per unit (a
        pre-pruned layer's mask too).

    Raises:
        ValueError: for an unknown estimator, a `num_samples`, `batch_size`
            or `max_examples` that is not a positive whole number, an
            unsupported loss or reduction, a model without trainable
            variables, with several outputs or an output that is neither
            `(batch, d)` nor `(batch, positions, d)`, per-token outputs
            with the `batched` estimator or labels without positions, a
            `sample_weight` of the wrong shape or a negative one, data whose
            outputs are all masked,
            labels that the loss would not read (out of range, one-hot for a
            sparse loss, integers for a categorical one, a wrong shape),
            unbatched or endless data without `max_examples`, empty data,
            non-finite inputs or Fisher values, when the backward passes of
            a single example would not fit in the device's memory, or
            `structure="kfac"` on a model with no layer to factor (Dense,
            EinsumDense, Embedding, PositionEmbedding, Conv1D, Conv2D,
            DepthwiseConv2D, SeparableConv2D; a
            warning names
            the variables that stay diagonal when only some are outside
            one) or on data whose sample weights are all zero.

    Example:

    ```python
    import keras
    import numpy as np

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    x, y = np.ones((8, 3), "float32"), np.arange(8) % 2
    fisher, n = estimate_fisher(model, (x, y))
    print(n, sorted(fisher))  # 8 ['sequential/dense/bias', ...]
    ```
    """
    if estimator not in ESTIMATORS:
        raise ValueError(
            f"Unknown estimator {estimator!r}; expected one of {ESTIMATORS}."
        )
    if structure not in STRUCTURES:
        raise ValueError(
            f"Unknown structure {structure!r}; expected one of {STRUCTURES}."
        )
    if structure == "kfac" and estimator == "batched":
        raise ValueError(
            "The `batched` estimator has no per-example gradients to "
            "factor: use `exact`, `sampled` or `empirical` with "
            "structure='kfac'."
        )
    num_samples = check_positive_int("num_samples", num_samples)
    batch_size = check_positive_int("batch_size", batch_size)
    max_examples = check_positive_int(
        "max_examples", max_examples, allow_none=True
    )
    backend.check_distribution()
    likelihood = likelihood or likelihood_from_loss(
        getattr(model, "loss", None)
    )
    variables = list(model.trainable_variables)
    if not variables:
        raise ValueError(
            "The model has no trainable variables: build it (call it on data "
            "or give it an input shape) before estimating its Fisher."
        )
    sized = set()  # the steps this call has sized to the free memory
    totals = None
    num_examples = 0
    num_positions = 0
    for x, y, weights in iterate_batches(
        data, batch_size, max_examples, weights=True
    ):
        check_finite_data("The data's inputs", x)
        if not sized:
            _check_batch_axis(model, x)
        # One step per input shape: batches of sequences of another length
        # (or any other input shape) get their own.
        step = _cached_step(
            model, variables, likelihood, estimator, num_samples, x, structure
        )
        if step not in sized:
            sized.add(step)
            step.part_size = _examples_that_fit(
                step, estimator, num_samples, backend.free_memory()
            )
        y = step.check_labels(y)
        # On several processes each holds its rows of one global batch.
        offset, global_batch = backend.global_batch_position(len(y))
        batch = (x, y, step.unit_weights(weights, y))
        positions = y.shape[1] if step.sequence else 1
        if estimator == "sampled":
            # Per-token outputs draw a label per position: the positions of
            # all examples are numbered one after another.
            noise = sampled_noise(
                likelihood,
                seed,
                num_positions + offset * positions,
                len(y) * positions,
                step.output_dim,
                num_samples,
            )
            batch += (noise.reshape(len(y), positions, *noise.shape[1:]),)
        # Processes split alike or not at all: each runs the same
        # collectives, whatever memory it has free.
        part_size = step.part_size if global_batch == len(y) else None
        for part in _parts(batch, len(y), part_size):
            first = totals is None
            totals, checks = step.run(totals, part)
            if first:
                # The one host sync before the end: are probabilities
                # probabilities? (on every device's share of the batch)
                for device_checks in checks:
                    likelihood.check_outputs(
                        [float(ops.convert_to_numpy(c)) for c in device_checks]
                    )
        num_examples += global_batch
        num_positions += global_batch * positions
    if num_examples == 0:
        raise ValueError(
            "The data is empty: a Fisher memory needs at least one example."
        )
    totals = backend.batch_total(totals)
    # The Fisher is a mean per unit the loss averages over: per unmasked
    # position for per-token outputs, per (unmasked) example otherwise.
    num_examples = int(round(float(ops.convert_to_numpy(totals["units"]))))
    if num_examples == 0:
        raise ValueError(
            "Every output of the data is masked: a Fisher memory needs at "
            "least one unmasked example or position."
        )
    fisher = {}
    for index, total in zip(step.diagonal, totals["diagonal"]):
        fisher[variables[index].path] = _mean(
            total, num_examples, variables[index].path, "float32"
        )
    if structure == "diagonal":
        return fisher, num_examples
    kronecker = {}
    for (layer, kernel, bias, axes), (a, g, count) in zip(
        step.kfac_blocks, totals["factors"]
    ):
        kernel, bias = kernel.path, bias.path if bias is not None else None
        count = float(ops.convert_to_numpy(count))
        if count == 0:
            raise ValueError(
                "Every sample_weight is zero: the K-FAC factors of "
                f"{kernel} average over no input."
            )
        kronecker[kernel] = (
            bias,
            # K-FAC-expand: `A` a mean over the counted positions, `G` per
            # unit (summed over positions).
            _mean(a, count, kernel, "float64"),
            _mean(g, num_examples, kernel, "float64"),
            _kernel_mask(layer),
            axes,
        )
    return fisher, num_examples, kronecker


# Examples per generator of `sampled_noise`: small enough that a batch
# draws little beyond its own rows, large enough that making generators
# costs little next to the per-example gradients.
NOISE_BLOCK = 64


def sampled_noise(likelihood, seed, start, size, output_dim, num_samples):
    """The noise behind the labels `sampled` draws for a run of examples.

    Examples are numbered over the whole data, the global batches of all
    processes one after another. Each block of `NOISE_BLOCK` consecutive
    examples has its own generator, seeded by `(seed, block)`, so an
    example's noise depends only on its number: not on the batch size, nor
    on how processes or devices share a batch. The union of what every
    process draws for its rows is what one process draws for all of them.

    Args:
        likelihood: the `Likelihood` whose `sample` reads the noise.
        seed: the estimation's seed.
        start: the number of the first example.
        size: how many consecutive examples.
        output_dim: the model's output dimension.
        num_samples: labels drawn per example.

    Returns:
        A float32 array of shape `(size, num_samples, output_dim)`.

    Example:

    ```python
    from keras_memgeom.src.memory.likelihood import Categorical

    whole = sampled_noise(Categorical(), 0, 0, 10, 3, 2)
    half = sampled_noise(Categorical(), 0, 5, 5, 3, 2)
    assert (whole[5:] == half).all()
    ```
    """
    first = start // NOISE_BLOCK
    last = (start + size - 1) // NOISE_BLOCK
    blocks = [
        likelihood.draw_noise(
            np.random.default_rng([seed, block]),
            NOISE_BLOCK,
            output_dim,
            num_samples,
        )
        for block in range(first, last + 1)
    ]
    skip = start - first * NOISE_BLOCK
    noise = np.concatenate(blocks, axis=1)[:, skip : skip + size]
    return np.ascontiguousarray(np.moveaxis(noise, 1, 0), dtype="float32")


def _kernel_mask(layer):
    """A pre-pruned layer's mask as a `(fan_in, units)` matrix, else `None`.

    A pre-pruned layer has one Kronecker block, its kernel's.
    """
    if not isinstance(layer, MaskedKernelMixin):
        return None
    mask = np.broadcast_to(
        ops.convert_to_numpy(layer.mask), tuple(layer.kernel.shape)
    )
    return mask.reshape(-1, layer.kernel.shape[-1]).astype("float32")


def _mean(total, num_examples, path, dtype):
    value = (
        np.asarray(ops.convert_to_numpy(total), dtype="float64") / num_examples
    )
    if not np.all(np.isfinite(value)):
        raise ValueError(
            f"The Fisher of {path} is not finite: the model's outputs or "
            "weights hold NaN or infinite values."
        )
    return value.astype(dtype)


# The share of the free device memory one step may plan to use: the rest
# is left to the compiler's workspace and to what the estimate misses.
MEMORY_SHARE = 0.5


def _examples_that_fit(step, estimator, num_samples, free):
    """How many examples one step may hold, from an estimate of its memory.

    A step holds, per example, the forward activations once and, per output
    cotangent, their pullback and the per-example tensors of the tap rules;
    the generic path adds a gradient of every variable it covers per
    cotangent. Batches larger than what fits in `MEMORY_SHARE` of the free
    memory are computed in parts (the sums are the same).

    Returns:
        The number of examples per part, or `None` where the backend does
        not report its free memory.

    Raises:
        ValueError: when not even one example fits.
    """
    if free is None:
        return None
    cotangents = {
        "exact": step.output_dim * step.positions,
        "sampled": num_samples,
    }.get(estimator, 1)
    taps = step.taps
    activations = taps.activation_size
    per_cotangent = 2 * activations
    generic = sum(int(np.prod(step.variables[i].shape)) for i in step.generic)
    if generic:
        per_cotangent += generic + activations
    itemsize = np.dtype(
        keras.backend.standardize_dtype(step.variables[0].dtype)
    ).itemsize
    need = itemsize * (
        activations
        + cotangents * per_cotangent
        + taps.per_example_elements(cotangents)
    )
    budget = MEMORY_SHARE * free
    if need > budget:
        raise ValueError(
            f"Estimating the {estimator!r} Fisher of one example needs about "
            f"{need / 2**30:.3g} GiB ({cotangents} output cotangents, each "
            f"pulled back through {activations} activation values"
            + (
                f" and {generic} variable entries without a per-example rule"
                if generic
                else ""
            )
            + f"), more than half the {free / 2**30:.3g} GiB free on the "
            "device. Use estimator='sampled' (num_samples=1) or "
            "'empirical', a smaller input, or a device with more memory."
        )
    return max(1, int(budget // need))


def _parts(batch, size, part_size):
    """`batch` (a tuple of row-aligned structures) in parts of `part_size`."""
    if part_size is None or size <= part_size:
        yield batch
        return
    for start in range(0, size, part_size):
        yield keras.tree.map_structure(
            lambda a: a[start : start + part_size], batch
        )


def _check_batch_axis(model, x):
    """Refuses inputs without a batch axis, such as an unbatched `tf.data`."""
    try:
        specs = model.inputs
    except (AttributeError, ValueError):  # subclassed models have none
        return
    leaves = keras.tree.flatten(x)
    if not specs or len(specs) != len(leaves):
        return
    for leaf, spec in zip(leaves, specs):
        if np.ndim(leaf) == len(spec.shape) - 1:
            raise ValueError(
                f"An input batch has shape {np.shape(leaf)} but the model "
                f"takes batches of shape {tuple(spec.shape)}: the data has no "
                "batch axis. Batch a tf.data.Dataset with `.batch(...)` first."
            )


class _BatchStep:
    """The compiled per-batch computation for one model and estimator."""

    def __init__(
        self, model, variables, likelihood, estimator, example_x, structure
    ):
        self.model = model
        self.variables = variables
        self.likelihood = likelihood
        self.estimator = estimator
        self.structure = structure
        self.taps = LayerTaps(model).probe(example_x)
        position = {id(v): i for i, v in enumerate(variables)}
        self.fast = [position[id(v)] for v in self.taps.variables]
        self.generic = sorted(set(range(len(variables))) - set(self.fast))
        self.kfac_layers = self.taps.kfac_layers if structure == "kfac" else []
        self.kfac_blocks = self.taps.kfac_blocks if structure == "kfac" else []
        in_blocks = {
            position[id(v)]
            for _, kernel, bias, _ in self.kfac_blocks
            for v in (kernel, bias)
            if v is not None
        }
        # The variables whose diagonal the step returns, in its order.
        self.diagonal = sorted(set(range(len(variables))) - in_blocks)
        if structure == "kfac":
            _check_kfac_coverage(variables, in_blocks, self.diagonal)
        outputs = model(example_x, training=False)
        if len(keras.tree.flatten(outputs)) != 1:
            names = getattr(model, "output_names", None) or len(
                keras.tree.flatten(outputs)
            )
            raise ValueError(
                "A Fisher memory needs a model with one output; this model "
                f"has outputs {names}. Estimate it on a model with a single "
                "output, or pass `likelihood=` for a single-output sub-model."
            )
        if len(outputs.shape) not in (2, 3):
            raise ValueError(
                "A Fisher memory needs a model with one `(batch, d)` output, "
                "or `(batch, positions, d)` per-token outputs; this model "
                f"outputs shape {tuple(outputs.shape)}."
            )
        self.sequence = len(outputs.shape) == 3
        if self.sequence and estimator == "batched":
            raise ValueError(
                "The `batched` estimator squares whole-batch gradients and "
                "has no per-token form: use `exact`, `sampled` or "
                "`empirical` with per-token outputs."
            )
        self.output_dim = outputs.shape[-1]
        self.positions = outputs.shape[1] if self.sequence else 1
        # Sums kept where they are computed (on every device or replica)
        # from batch to batch, reduced once by `backend.batch_total`.
        self.run = backend.batch_step(self._squared_gradients, variables)

    def check_labels(self, y):
        """Host labels checked per output unit (per position of a sequence).

        Raises:
            ValueError: as `Likelihood.check_labels`, or if per-token
                outputs come with labels that have no position axis.
        """
        if not self.sequence:
            return self.likelihood.check_labels(y, self.output_dim)
        y = np.asarray(y)
        if y.ndim < 2:
            raise ValueError(
                "The model has per-token outputs `(batch, positions, d)`, so "
                "the labels need a position axis too; got labels of shape "
                f"{y.shape}."
            )
        flat = self.likelihood.check_labels(
            y.reshape(-1, *y.shape[2:]), self.output_dim
        )
        return flat.reshape(*y.shape[:2], *flat.shape[1:])

    def unit_weights(self, weights, y):
        """The sample weights as one float per example (or position).

        A weight per example applies to all its positions, as Keras's losses
        broadcast it.

        Raises:
            ValueError: naming `sample_weight` if it does not have one
                non-negative finite weight per example (or position).
        """
        shape = y.shape[:2] if self.sequence else y.shape[:1]
        if weights is None:
            return np.ones(shape, "float32")
        weights = np.asarray(weights, "float32")
        if weights.ndim == len(shape) + 1 and weights.shape[-1] == 1:
            weights = weights[..., 0]
        if weights.shape == shape[:1]:
            weights = np.broadcast_to(
                weights.reshape(-1, *([1] * (len(shape) - 1))), shape
            )
        if weights.shape != shape:
            raise ValueError(
                f"The sample_weight of shape {weights.shape} does not fit "
                f"outputs of shape {shape + (self.output_dim,)}: expected "
                f"{shape[:1]} or {shape}."
            )
        if not np.all(np.isfinite(weights)) or np.any(weights < 0):
            raise ValueError(
                "The sample_weight must be finite and non-negative."
            )
        return np.ascontiguousarray(weights)

    def _forward(self, values, x):
        mapping = list(zip(self.variables, values))
        with keras.StatelessScope(state_mapping=mapping):
            return self.model(x, training=False)

    def _loss_root(self, outputs):
        # The loss is `c * (-log p)`: its curvature is `c` times the Fisher.
        return math.sqrt(self.likelihood.loss_scale(outputs.shape[-1]))

    def _cotangents(self, outputs, y, noise):
        """`(K, batch, d)` output cotangents; squared pullbacks sum to F."""
        root = self._loss_root(outputs)
        if self.estimator == "exact":
            return self.likelihood.fisher_factors(outputs) * root
        if self.estimator == "sampled":
            labels = self.likelihood.sample(outputs, noise)
            num_samples = ops.cast(ops.shape(noise)[0], outputs.dtype)
            return self.likelihood.score(outputs, labels) * (
                root / ops.sqrt(num_samples)
            )
        labels = self.likelihood.prepare_labels(y, outputs)
        return self.likelihood.score(outputs, labels)[None] * root

    def _unit_cotangents(self, outputs, y, weights, mask, noise):
        """`(K,) + outputs.shape` cotangents, their units, the counted ones.

        Every output unit (an example, or a position of a sequence) is one
        draw of the likelihood: its cotangents are scaled by the square root
        of its sample weight, masked units get none and are not counted.
        The units are `loss_units`, whatever their weight (Keras divides
        a weighted loss by them); the counted units, `(batch,
        [positions])`, 1 where the weight is positive too, are those whose
        inputs enter the K-FAC factors.
        Per-token outputs with the `exact` estimator pull back every
        position's cotangents apart, so that the squares hold no products
        of two positions: the Fisher of a sequence is the sum of its
        positions' (their labels are independent given the inputs).
        """
        d = self.output_dim
        dtype = outputs.dtype
        units = loss_units(outputs, mask)
        weights = ops.cast(weights, dtype) * units
        count = ops.sum(units)
        counted = ops.cast(weights > 0, dtype)
        if noise is not None:  # (batch, positions, samples, d)
            noise = ops.reshape(
                ops.transpose(noise, (2, 0, 1, 3)), (noise.shape[2], -1, d)
            )
        flat = ops.reshape(outputs, (-1, d))
        rank = len(outputs.shape)
        labels = ops.reshape(y, (-1, *y.shape[rank - 1 :]))
        cotangents = self._cotangents(flat, labels, noise)
        cotangents = cotangents * ops.sqrt(ops.reshape(weights, (1, -1, 1)))
        cotangents = ops.reshape(
            cotangents, (cotangents.shape[0], *ops.shape(outputs))
        )
        if self.sequence and self.estimator == "exact":
            positions = outputs.shape[1]
            apart = ops.einsum(
                "st,kbtd->skbtd", ops.eye(positions, dtype=dtype), cotangents
            )
            # A static count of cotangents: TensorFlow maps over it.
            cotangents = ops.reshape(
                apart,
                (positions * cotangents.shape[0], *ops.shape(outputs)),
            )
        return ops.stop_gradient(cotangents), count, counted

    def _squared_gradients(self, values, x, y, weights, noise=None):
        """Per-variable sums of squared per-unit gradients, and checks.

        `weights` and `noise` (for `sampled`) come per example, `(batch,
        [positions])` and `(batch, positions, samples, d)`, so that they
        are split with the batch.
        """
        if self.estimator == "batched":
            return self._batched(values, x, y, weights)
        batch = ops.shape(keras.tree.flatten(x)[0])[0]

        def forward(taps):
            mapping = list(zip(self.variables, values))
            with keras.StatelessScope(state_mapping=mapping):
                with self.taps.active(taps) as inputs:
                    outputs = self.model(x, training=False)
            mask = get_keras_mask(outputs)
            return outputs, (list(inputs), [] if mask is None else [mask])

        dtype = values[0].dtype
        outputs, (inputs, mask), pullback = backend.linearize(
            forward, self.taps.zeros(batch, dtype)
        )
        cotangents, count, counted = self._unit_cotangents(
            outputs, y, weights, mask[0] if mask else None, noise
        )
        checks = self.likelihood.output_checks(
            ops.reshape(ops.stop_gradient(outputs), (-1, self.output_dim))
        )
        sums = {}
        if self.generic:
            generic = self._per_example(
                values, x, ops.moveaxis(cotangents, 1, 0)
            )
            sums.update(zip(self.generic, generic))
        factors = []
        if self.taps.layers:
            grads = pullback(cotangents)
            fast = self.taps.squared_gradients(
                inputs, grads, kfac=self.kfac_layers
            )
            sums.update(zip(self.fast, fast))
            if self.kfac_layers:
                factors = self.taps.kronecker_factors(inputs, grads, counted)
        diagonal = [sums[i] for i in self.diagonal]
        return {
            "diagonal": diagonal,
            "factors": factors,
            "units": count,
        }, checks

    def _per_example(self, values, x, cotangents):
        """Generic path: per-example gradients, vectorized over the batch."""

        def one_example(x_b, u_b):
            def forward(generic_values):
                current = list(values)
                for i, v in zip(self.generic, generic_values):
                    current[i] = v
                outputs = self._forward(
                    current, keras.tree.map_structure(lambda a: a[None], x_b)
                )
                return outputs, ()

            _, _, pullback = backend.linearize(
                forward, [values[i] for i in self.generic]
            )
            grads = pullback(u_b[:, None])
            return [ops.sum(ops.square(g), axis=0) for g in grads]

        per_example = backend.vectorize(one_example)(x, cotangents)
        return [ops.sum(g, axis=0) for g in per_example]

    def _batched(self, values, x, y, weights):
        def forward(all_values):
            return self._forward(all_values, x), ()

        outputs, _, pullback = backend.linearize(forward, list(values))
        labels = self.likelihood.prepare_labels(y, outputs)
        batch = ops.cast(ops.shape(outputs)[0], outputs.dtype)
        score = self.likelihood.score(outputs, labels) * self._loss_root(
            outputs
        )
        weights = ops.cast(weights, score.dtype)[:, None]
        grads = pullback(ops.stop_gradient(score * weights)[None] / batch)
        # batch * (batch-mean gradient)^2 estimates the per-example Fisher; the
        # extra factor `batch` makes the sums average correctly over examples.
        sums = [batch * batch * ops.square(g[0]) for g in grads]
        checks = self.likelihood.output_checks(ops.stop_gradient(outputs))
        return {"diagonal": sums, "factors": [], "units": batch}, checks


def _check_kfac_coverage(variables, in_blocks, diagonal):
    """Refuses a K-FAC memory of no layer; says which variables stay diagonal.

    Built once per model and settings (steps are cached), so it warns once.
    """
    paths = [variables[i].path for i in diagonal]
    if not in_blocks:
        raise ValueError(
            "structure='kfac' factors Dense, matmul-shaped EinsumDense "
            "(attention projections), Conv1D, Conv2D, DepthwiseConv2D, "
            "SeparableConv2D, Embedding and keras-hub PositionEmbedding "
            "layers, and this "
            "model has none to factor (its trainable "
            f"variables: {paths}). Use structure='diagonal'."
        )
    if paths:
        warnings.warn(
            "structure='kfac': these variables are not in a layer with "
            f"Kronecker factors and keep a diagonal Fisher: {paths}.",
            stacklevel=5,
        )


def _cached_step(
    model, variables, likelihood, estimator, num_samples, example_x, structure
):
    # The number of cotangents and the positions (the taps' shapes, the
    # per-token cotangents) are static in a traced step: one step per count
    # and per input shape, less the batch axis.
    key = (
        estimator,
        structure,
        num_samples if estimator == "sampled" else None,
        type(likelihood),
        tuple(sorted(vars(likelihood).items())),
        tuple((v.path, tuple(v.shape)) for v in variables),
        tuple(np.shape(leaf)[1:] for leaf in keras.tree.flatten(example_x)),
    )
    steps = _STEPS.setdefault(model, {})
    if key not in steps:
        steps[key] = _BatchStep(
            model, variables, likelihood, estimator, example_x, structure
        )
    return steps[key]
