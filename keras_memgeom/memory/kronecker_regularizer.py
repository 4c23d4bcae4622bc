"""A Kronecker-factored memory of one layer as a Keras regularizer."""

import keras
import numpy as np

from keras_memgeom.memory.fisher_regularizer import memory_state
from keras_memgeom.memory.kronecker import check_kronecker_factors
from keras_memgeom.memory.kronecker import kernel_matrix_shape
from keras_memgeom.memory.penalty import kronecker_penalty
from keras_memgeom.utils.checks import check_number


class KroneckerRegularizer(keras.regularizers.Regularizer):
    """Penalty `scale * sum_k w_k vec(D_k)^T (A_k (x) G_k) vec(D_k)` on a layer.

    Set on the layer's kernel, it also reads the layer's bias (the factors
    couple them: `D_k` is the kernel as a `(fan_in, units)` matrix with the
    bias as a last row, less the `k`-th anchor). One term per remembered
    memory keeps a sum of memories exact (EWC); a merged memory has one.
    The anchors, factors and `scale` are non-trainable `keras.Variable`s, so
    a compiled step reads them as state.

    It cannot be serialized into a layer's config (it refers to another
    variable): the package's models save memories as assets instead.

    Args:
        terms: a list of `(anchor_kernel, anchor_bias, a, g, weight)`:
            `anchor_kernel` as a `(fan_in, units)` matrix, `anchor_bias`
            `(units,)` or `None`, the factors, and the term's share `w_k`.
        mask: `None`, or a pre-pruned layer's `(fan_in, units)` mask.
        bias: the layer's bias variable, or `None`.
        scale: a scalar `keras.Variable`, `strength / 2 * n /
            num_train_examples`.
        base: another regularizer of the kernel to add, or `None`.
        like: the kernel variable, whose distribution layout the anchor
            takes where shapes agree (the factors are replicated).

    Raises:
        ValueError: naming the kernel, if a term's anchors or factors have
            the wrong shapes (the expected and given ones are named), hold
            NaN or infinite values, or a factor is not symmetric positive
            semi-definite.
        NotImplementedError: from `get_config`: the penalty refers to the
            layer's bias, so it cannot be saved in a layer's config.

    Example:

    ```python
    import keras
    import numpy as np

    import keras_memgeom

    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    y = np.arange(64) % 3
    model = keras_memgeom.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile("adam", loss)
    model.fit(x, y, epochs=2, verbose=0)

    # `attach` builds one per Dense layer of a Kronecker-factored memory.
    memory = keras_memgeom.FisherMemory.estimate(
        model, (x, y), structure="kfac"
    )
    keras_memgeom.attach(model, memory, num_train_examples=len(x))
    kernel = model.layers[0].kernel
    print(type(kernel.regularizer).__name__)  # KroneckerRegularizer
    ```
    """

    def __init__(self, terms, bias, scale, mask=None, base=None, like=None):
        terms = _checked_terms(terms, bias, like)
        self.bias = bias
        self.mask = (
            memory_state(mask, "memory_mask", like)
            if mask is not None
            else None
        )
        self.scale = scale
        self.base = keras.regularizers.get(base)
        self.terms = [
            (
                memory_state(
                    np.asarray(kernel, "float32"), "memory_anchor", like
                ),
                memory_state(bias_anchor, "memory_anchor", bias)
                if bias_anchor is not None
                else None,
                memory_state(np.asarray(a, "float32"), "memory_kronecker_a"),
                memory_state(np.asarray(g, "float32"), "memory_kronecker_g"),
                float(weight),
            )
            for kernel, bias_anchor, a, g, weight in terms
        ]

    @property
    def variables(self):
        """The state the penalty reads (not the shared scale)."""
        state = [v for term in self.terms for v in term[:4] if v is not None]
        return state + ([self.mask] if self.mask is not None else [])

    def __call__(self, x):
        bias = self.bias.value if self.bias is not None else None
        values = [
            kronecker_penalty(
                x,
                bias,
                kernel,
                bias_anchor,
                a,
                g,
                keras.ops.multiply(self.scale, w),
                self.mask,
            )
            for kernel, bias_anchor, a, g, w in self.terms
        ]
        value = keras.ops.sum(keras.ops.stack(values))
        if self.base is not None:
            value = keras.ops.add(value, self.base(x))
        return value

    def get_config(self):
        raise NotImplementedError(
            "A Kronecker-factored memory penalty couples a layer's kernel and "
            "bias and cannot be saved in a layer's config. Use "
            "keras_memgeom.Model or keras_memgeom.Sequential, which save "
            "memories with the model, or detach the memory before saving."
        )


def _checked_terms(terms, bias, like):
    """The terms as float arrays, each checked against the layer's shapes."""
    owner = repr(like.path) if like is not None else "the kernel"
    expected = None if like is None else kernel_matrix_shape(like.shape)
    checked = []
    for k, (kernel, bias_anchor, a, g, weight) in enumerate(terms):
        where = f"Term {k} of the memory of {owner}"
        kernel = np.asarray(kernel, "float32")
        if kernel.ndim != 2 or kernel.shape != (expected or kernel.shape):
            raise ValueError(
                f"{where}: the anchor kernel must be a "
                f"{expected or '(fan_in, units)'} matrix; got shape "
                f"{kernel.shape}."
            )
        units = kernel.shape[1]
        if bias is not None and tuple(bias.shape) != (units,):
            raise ValueError(
                f"{where}: the bias {bias.path!r} has shape "
                f"{tuple(bias.shape)}; expected {(units,)}."
            )
        if (bias is None) != (bias_anchor is None):
            raise ValueError(
                f"{where}: the layer {'has no' if bias is None else 'has a'} "
                f"bias but the term {'has' if bias is None else 'lacks'} a "
                "bias anchor."
            )
        if bias_anchor is not None:
            bias_anchor = np.asarray(bias_anchor, "float32")
            if bias_anchor.shape != (units,):
                raise ValueError(
                    f"{where}: the bias anchor must have shape {(units,)}; "
                    f"got {bias_anchor.shape}."
                )
        for part in (kernel, bias_anchor):
            if part is not None and not np.all(np.isfinite(part)):
                raise ValueError(
                    f"{where}: its anchor holds NaN or infinite values."
                )
        rows = kernel.shape[0] + (bias is not None)
        a, g = check_kronecker_factors(f"{owner} (term {k})", a, g, rows, units)
        weight = check_number(f"terms[{k}] weight", weight, minimum=0.0)
        checked.append((kernel, bias_anchor, a, g, weight))
    return checked
