"""A Kronecker-factored memory of one layer as a Keras regularizer."""

import math
import uuid
import weakref

import keras
import numpy as np
from keras.src.saving.keras_saveable import KerasSaveable

from keras_memgeom.src.memory.fisher_regularizer import load_state
from keras_memgeom.src.memory.fisher_regularizer import memory_state
from keras_memgeom.src.memory.kronecker import EigenFactor
from keras_memgeom.src.memory.kronecker import check_kernel_axes
from keras_memgeom.src.memory.kronecker import check_kronecker_factors
from keras_memgeom.src.memory.kronecker import kernel_matrix_shape
from keras_memgeom.src.memory.penalty import kronecker_penalty
from keras_memgeom.src.utils.checks import check_number

# Deserialized halves of a penalty waiting for their partner, by key: a
# layer's config holds the kernel's and the bias's regularizers apart.
_UNPAIRED = weakref.WeakValueDictionary()


@keras.saving.register_keras_serializable(package="keras_memgeom")
class KroneckerRegularizer(KerasSaveable, keras.regularizers.Regularizer):
    """Penalty `scale * sum_k w_k vec(D_k)^T (A_k (x) G_k) vec(D_k)` on a layer.

    Set on the layer's kernel, it also reads the layer's bias (the factors
    couple them: `D_k` is the kernel as a `(fan_in, units)` matrix with the
    bias as a last row, less the `k`-th anchor). One term per remembered
    memory keeps a sum of memories exact (EWC); a merged memory has one.
    The anchors, factors and `scale` are non-trainable `keras.Variable`s, so
    a compiled step reads them as state.

    On the package's models it reads the bias variable and is saved with
    the model's memories as assets. On a plain Keras model, whose layer
    configs are all that is rebuilt on loading, it is set on the kernel with
    `bias=None, paired=True` and its `KroneckerBiasRegularizer` on the bias:
    the kernel's call holds the kernel's value and the bias's call adds the
    whole block's penalty. The config holds shapes only; `model.save` keeps
    the arrays in the weights file.

    Args:
        terms: a list of `(anchor_kernel, anchor_bias, a, g, weight)`:
            `anchor_kernel` as a `(fan_in, units)` matrix, `anchor_bias`
            `(units,)` or `None`, the factors (matrices or `EigenFactor`s,
            whose eigenvectors, eigenvalues and remainder become three
            variables), and the term's share `w_k`.
        mask: `None`, or a pre-pruned layer's `(fan_in, units)` mask.
        axes: `None`, or the permutation of the kernel's axes that puts
            its input axes first (`KroneckerBlock.axes`).
        bias: the layer's bias variable, or `None`.
        scale: a scalar `keras.Variable`, `strength / 2 * n /
            num_train_examples`.
        base: another regularizer of the kernel to add, or `None`.
        like: the kernel variable, whose distribution layout the anchor
            takes where shapes agree (the factors are replicated).
        paired: whether a `KroneckerBiasRegularizer` on the bias completes
            the penalty (then `bias` is `None`).
        key: the pairing's key in a config (made here by default).

    Raises:
        ValueError: naming the kernel, if a term's anchors or factors have
            the wrong shapes (the expected and given ones are named), hold
            NaN or infinite values, or a factor is not symmetric positive
            semi-definite.

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

    def __init__(
        self,
        terms,
        bias,
        scale,
        mask=None,
        base=None,
        like=None,
        paired=False,
        key=None,
        axes=None,
    ):
        if paired and bias is not None:
            raise ValueError(
                "A paired KroneckerRegularizer reads the bias from its "
                "partner on the bias: pass `bias=None`."
            )
        if axes is not None:
            axes = check_kernel_axes(
                repr(like.path) if like is not None else "the kernel",
                axes,
                len(like.shape) if like is not None else np.size(axes),
            )
        self.axes = axes
        terms = _checked_terms(terms, bias, like, paired, axes)
        self.bias = bias
        self.paired = bool(paired)
        self.key = key or uuid.uuid4().hex
        self._held_kernel = None
        if not isinstance(scale, keras.Variable):
            scale = memory_state(float(scale), "memory_scale")
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
        if self.paired:
            # The partner on the bias adds the block's penalty: Keras calls
            # a layer's regularizers in the order of its weights, the kernel
            # first (checked by `attach`).
            self._held_kernel = x
            value = keras.ops.zeros((), "float32")
        else:
            value = self.memory_penalty(x)
        if self.base is not None:
            value = keras.ops.add(value, self.base(x))
        return value

    def memory_penalty(self, x):
        """The block's penalty at kernel `x`, without `base`.

        Raises:
            ValueError: for a paired half, which does not read the bias.
        """
        if self.paired:
            raise ValueError(
                "A paired KroneckerRegularizer's penalty needs the bias: "
                "call `penalty(kernel, bias)`."
            )
        bias = self.bias.value if self.bias is not None else None
        return self.penalty(x, bias)

    def penalty(self, kernel, bias):
        """The block's penalty at the kernel and bias values given."""
        values = [
            kronecker_penalty(
                kernel,
                bias,
                anchor,
                bias_anchor,
                a,
                g,
                keras.ops.multiply(self.scale, w),
                self.mask,
                self.axes,
            )
            for anchor, bias_anchor, a, g, w in self.terms
        ]
        return keras.ops.sum(keras.ops.stack(values))

    def take_held_kernel(self):
        """The kernel value held by the last call, released."""
        kernel, self._held_kernel = self._held_kernel, None
        if kernel is None:
            raise ValueError(
                "The Kronecker-factored penalty on a layer's bias was "
                "evaluated before the one on its kernel: the layer lists "
                "its bias first."
            )
        return kernel

    def _state(self):
        state = {}
        for k, (kernel, bias, a, g, _) in enumerate(self.terms):
            state[f"term_{k}_kernel"] = kernel
            if bias is not None:
                state[f"term_{k}_bias"] = bias
            for name, factor in (("a", a), ("g", g)):
                if isinstance(factor, EigenFactor):
                    for part, variable in factor._asdict().items():
                        state[f"term_{k}_{name}_{part}"] = variable
                else:
                    state[f"term_{k}_{name}"] = factor
        if self.mask is not None:
            state["mask"] = self.mask
        return state

    def get_config(self):
        # Shapes only: the arrays go to the weights file
        # (`save_own_variables`), as for any other weight.
        return {
            "terms": [
                {
                    "kernel": list(kernel.shape),
                    "bias": list(bias.shape) if bias is not None else None,
                    "a": _factor_shape(a),
                    "g": _factor_shape(g),
                    "weight": weight,
                }
                for kernel, bias, a, g, weight in self.terms
            ],
            "mask": list(self.mask.shape) if self.mask is not None else None,
            "axes": list(self.axes) if self.axes is not None else None,
            "scale": float(keras.ops.convert_to_numpy(self.scale)),
            "base": keras.regularizers.serialize(self.base)
            if self.base is not None
            else None,
            "paired": self.paired,
            "key": self.key,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        reads_bias = any(t["bias"] is not None for t in config["terms"])
        if reads_bias and not config.get("paired"):
            raise ValueError(
                "A KroneckerRegularizer that reads a layer's bias variable "
                "cannot be rebuilt from a config."
            )
        zeros = lambda shape: np.zeros(shape, "float32")  # noqa: E731
        config["terms"] = [
            (
                zeros(t["kernel"]),
                zeros(t["bias"]) if t["bias"] is not None else None,
                _zero_factor(t["a"]),
                _zero_factor(t["g"]),
                t["weight"],
            )
            for t in config["terms"]
        ]
        if config["mask"] is not None:
            config["mask"] = zeros(config["mask"])
        regularizer = cls(bias=None, **config)
        if regularizer.paired:
            _pair(regularizer.key, kernel=regularizer)
        return regularizer

    def save_own_variables(self, store):
        """Writes the anchors, factors and mask into a Keras weights store."""
        for name, variable in self._state().items():
            store[name] = keras.ops.convert_to_numpy(variable)

    def load_own_variables(self, store):
        """Reads the anchors, factors and mask from a Keras weights store."""
        load_state(self, store, self._state())

    def _obj_type(self):
        # Keras's saving walks it like a loss: an object with state and no
        # saveable children.
        return "Loss"

    # Copies and pickles copy the object, not a saved model (KerasSaveable).
    __reduce__ = object.__reduce__


@keras.saving.register_keras_serializable(package="keras_memgeom")
class KroneckerBiasRegularizer(keras.regularizers.Regularizer):
    """The bias's half of a paired `KroneckerRegularizer`: adds its penalty.

    Set on a layer's bias by `attach` on a plain Keras model, so the layer's
    config rebuilds both halves; called after the kernel's half (Keras calls
    a layer's regularizers in the order of its weights), it returns the
    whole block's penalty at the kernel value the kernel's half holds.

    Args:
        kernel: the paired `KroneckerRegularizer`, or `None` while a config
            is rebuilt (then `key` finds it).
        base: the bias's own regularizer, or `None`, added.
        key: the pairing's key.

    Returns:
        Calling it on the bias's value returns the scalar penalty.

    Raises:
        ValueError: if called before the kernel's half.

    Example:

    ```python
    import numpy as np

    import keras_memgeom

    kernel = keras_memgeom.KroneckerRegularizer(
        [(np.zeros((2, 1)), np.zeros(1), np.eye(3), np.eye(1), 1.0)],
        bias=None,
        scale=0.5,
        paired=True,
    )
    bias = keras_memgeom.KroneckerBiasRegularizer(kernel)
    kernel(np.ones((2, 1), "float32"))  # holds the kernel, returns 0
    print(float(bias(np.ones(1, "float32"))))  # 0.5 * (1 + 1 + 1) = 1.5
    ```
    """

    def __init__(self, kernel=None, base=None, key=None):
        self.kernel = kernel
        self.key = key if kernel is None else kernel.key
        self.base = keras.regularizers.get(base)
        if kernel is None:
            _pair(self.key, bias=self)

    @property
    def variables(self):
        """No state of its own: the kernel's half holds the memory."""
        return []

    def __call__(self, x):
        if self.kernel is None:
            raise ValueError(
                "This KroneckerBiasRegularizer was rebuilt without the "
                "KroneckerRegularizer of its layer's kernel."
            )
        value = self.kernel.penalty(self.kernel.take_held_kernel(), x)
        if self.base is not None:
            value = keras.ops.add(value, self.base(x))
        return value

    def get_config(self):
        return {
            "key": self.key,
            "base": keras.regularizers.serialize(self.base)
            if self.base is not None
            else None,
        }


def _pair(key, kernel=None, bias=None):
    # A layer deserializes its kernel's and its bias's regularizers one
    # after the other, in either order: the second finds the first.
    waiting = _UNPAIRED.pop(key, None)
    if waiting is None:
        _UNPAIRED[key] = kernel if kernel is not None else bias
    elif bias is not None and isinstance(waiting, KroneckerRegularizer):
        bias.kernel = waiting
    elif kernel is not None and isinstance(waiting, KroneckerBiasRegularizer):
        waiting.kernel = kernel


def _checked_terms(terms, bias, like, paired, axes):
    """The terms as float arrays, each checked against the layer's shapes.

    A paired half reads the bias from its partner, so its terms carry bias
    anchors while `bias` is `None`.
    """
    owner = repr(like.path) if like is not None else "the kernel"
    shape = None
    if like is not None:
        shape = tuple(like.shape)
        if axes is not None:
            shape = tuple(shape[axis] for axis in axes)
    checked = []
    for k, (kernel, bias_anchor, a, g, weight) in enumerate(terms):
        where = f"Term {k} of the memory of {owner}"
        kernel = np.asarray(kernel, "float32")
        expected = None
        if shape is not None and kernel.ndim:
            try:
                expected = kernel_matrix_shape(shape, kernel.shape[-1])
            except ValueError:  # no output axes of that size: the default
                expected = kernel_matrix_shape(shape)
        if kernel.ndim != 2 or kernel.shape != (expected or kernel.shape):
            raise ValueError(
                f"{where}: the anchor kernel must be a "
                f"{expected or '(fan_in, units)'} matrix; got shape "
                f"{kernel.shape}."
            )
        units = kernel.shape[1]
        # A bias spans the kernel's output axes, `units` in all.
        if bias is not None and math.prod(bias.shape) != units:
            raise ValueError(
                f"{where}: the bias {bias.path!r} has shape "
                f"{tuple(bias.shape)}; expected {units} entries."
            )
        if not paired and (bias is None) != (bias_anchor is None):
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
        rows = kernel.shape[0] + (bias_anchor is not None)
        a, g = check_kronecker_factors(f"{owner} (term {k})", a, g, rows, units)
        weight = check_number(f"terms[{k}] weight", weight, minimum=0.0)
        checked.append((kernel, bias_anchor, a, g, weight))
    return checked


def _factor_shape(factor):
    """A factor's shape in a config: `[size, size]`, or `[size, r]` if
    truncated (its eigenvectors')."""
    if isinstance(factor, EigenFactor):
        return {"vectors": list(factor.vectors.shape)}
    return list(factor.shape)


def _zero_factor(shape):
    """A placeholder factor of a config's shape, filled by the weights file."""
    if isinstance(shape, dict):
        size, rank = shape["vectors"]
        # Orthonormal columns, so the placeholder passes the factor checks.
        return EigenFactor(
            np.eye(size, rank, dtype="float32"),
            np.zeros(rank, "float32"),
            0.0,
        )
    return np.zeros(shape, "float32")


def _factor_state(factor, name):
    """A factor as device state: one variable, or three for an `EigenFactor`."""
    if not isinstance(factor, EigenFactor):
        return memory_state(np.asarray(factor, "float32"), name)
    return EigenFactor(
        memory_state(np.asarray(factor.vectors, "float32"), f"{name}_vectors"),
        memory_state(np.asarray(factor.values, "float32"), f"{name}_values"),
        memory_state(np.float32(factor.remainder), f"{name}_remainder"),
    )
