"""A Kronecker-factored memory of one layer as a Keras regularizer."""

import keras
import numpy as np

from keras_memgeom.memory.fisher_regularizer import memory_state
from keras_memgeom.memory.kronecker import EigenFactor
from keras_memgeom.memory.penalty import kronecker_penalty


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
            `(units,)` or `None`, the factors (matrices or `EigenFactor`s,
            whose eigenvectors, eigenvalues and remainder become three
            variables), and the term's share `w_k`.
        mask: `None`, or a pre-pruned layer's `(fan_in, units)` mask.
        bias: the layer's bias variable, or `None`.
        scale: a scalar `keras.Variable`, `strength / 2 * n /
            num_train_examples`.
        base: another regularizer of the kernel to add, or `None`.
        like: the kernel variable, whose distribution layout the anchor
            takes where shapes agree (the factors are replicated).

    Raises:
        ValueError: from `get_config`: the penalty refers to the layer's bias,
            so it cannot be saved in a layer's config.

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
                _factor_state(a, "memory_kronecker_a"),
                _factor_state(g, "memory_kronecker_g"),
                float(weight),
            )
            for kernel, bias_anchor, a, g, weight in terms
        ]

    @property
    def variables(self):
        """The state the penalty reads (not the shared scale)."""
        state = []
        for kernel, bias_anchor, a, g, _ in self.terms:
            state += [kernel] + (
                [bias_anchor] if bias_anchor is not None else []
            )
            for factor in (a, g):
                state += (
                    list(factor)
                    if isinstance(factor, EigenFactor)
                    else [factor]
                )
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


def _factor_state(factor, name):
    """A factor as device state: one variable, or three for an `EigenFactor`."""
    if not isinstance(factor, EigenFactor):
        return memory_state(np.asarray(factor, "float32"), name)
    return EigenFactor(
        memory_state(np.asarray(factor.vectors, "float32"), f"{name}_vectors"),
        memory_state(np.asarray(factor.values, "float32"), f"{name}_values"),
        memory_state(np.float32(factor.remainder), f"{name}_remainder"),
    )
