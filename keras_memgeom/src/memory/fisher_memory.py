"""What a model learned from data, kept as a Fisher ellipsoid."""

import warnings

import numpy as np
from keras import ops

from keras_memgeom.src.memory.fisher import estimate_fisher
from keras_memgeom.src.memory.kronecker import KroneckerBlock
from keras_memgeom.src.memory.kronecker import block_diagonal
from keras_memgeom.src.memory.kronecker import block_matrix_shape
from keras_memgeom.src.memory.kronecker import check_kernel_axes
from keras_memgeom.src.memory.kronecker import check_kronecker_factors
from keras_memgeom.src.memory.kronecker import check_rank
from keras_memgeom.src.memory.kronecker import kernel_matrix
from keras_memgeom.src.memory.kronecker import kronecker_effective_dimension
from keras_memgeom.src.memory.kronecker import truncate_block
from keras_memgeom.src.memory.lora_regularizer import current_value
from keras_memgeom.src.memory.lora_regularizer import lora_layers
from keras_memgeom.src.memory.lora_regularizer import pretrained_variables
from keras_memgeom.src.memory.memory_file import read_memory_file
from keras_memgeom.src.memory.memory_file import write_memory_file
from keras_memgeom.src.memory.penalty import kronecker_penalty
from keras_memgeom.src.memory.penalty import penalty_scale
from keras_memgeom.src.memory.penalty import quadratic_penalty
from keras_memgeom.src.utils.checks import check_positive
from keras_memgeom.src.utils.checks import check_positive_int

# Eigenvectors kept per Kronecker factor by default: the penalty's matmuls
# then cost about as much as a batch of 32 through the layer.
DEFAULT_RANK = 32


class FisherMemory:
    """A memory: the anchor `theta_A`, its Fisher `F_A` and `n_A`.

    To second order the log-posterior after the remembered data is
    `-1/2 n_A (theta - theta_A)^T F_A (theta - theta_A)`; `F_A` is the
    per-example mean, so `n_A * F_A` is the precision.

    The Fisher has one of two structures. *Diagonal*: one number per
    parameter, an ellipsoid whose axes are the parameter axes. *Kronecker-
    factored* (K-FAC; Martens & Grosse 2015, Grosse & Martens 2016): each
    Dense or Conv2D layer's kernel and bias get the block `A (x) G`
    (`KroneckerBlock`), an ellipsoid with its own axes, at a cost of
    `fan_in^2 + units^2` numbers per layer, or `r * (fan_in + units)` with
    factors truncated to rank `r` (`estimate(..., rank=r)`); the other
    variables stay diagonal.

    A memory covers the model's *trainable* variables only. Non-trainable
    state, such as the moving mean and variance of `BatchNormalization`, is
    not remembered: training with a memory freezes those statistics by
    default (`normalization_statistics=` of `compile` and `attach`).

    Args:
        anchor: dict from variable path to array, the remembered weights.
        fisher: dict from path to the per-example mean diagonal Fisher
            (non-negative) of every variable no Kronecker block covers.
        num_examples: `n_A`, the number of examples remembered (of tokens,
            for per-token outputs: the units the loss averages over).
        estimator: how the Fisher was estimated (kept for the record).
        kronecker: dict from a kernel's path to its `KroneckerBlock`, or
            `None` for a diagonal memory.

    Raises:
        ValueError: if the keys or shapes disagree, values are not finite,
            the Fisher is negative, a factor is not symmetric or has the
            wrong size, or `num_examples` is not a positive whole number.

    Training under a memory is `keras_memgeom.Model`'s example.

    Example:

    ```python
    import keras
    import numpy as np

    import keras_memgeom

    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    y = np.arange(64) % 3
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    model.compile(
        "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    memory = keras_memgeom.FisherMemory.estimate(model, (x, y))
    memory.save("task_a.memory")
    print(keras_memgeom.FisherMemory.load("task_a.memory").num_examples)  # 64
    ```
    """

    def __init__(
        self, anchor, fisher, num_examples, estimator=None, kronecker=None
    ):
        kronecker = {
            k: KroneckerBlock(*block) for k, block in (kronecker or {}).items()
        }
        in_blocks = set(kronecker) | {
            b.bias for b in kronecker.values() if b.bias is not None
        }
        if set(anchor) != set(fisher) | in_blocks or set(fisher) & in_blocks:
            raise ValueError(
                "`anchor` and `fisher` must name the same variables (less "
                "those in Kronecker blocks, which `fisher` leaves out); they "
                f"differ in {sorted(set(anchor) ^ (set(fisher) | in_blocks))}."
            )
        num_examples = check_positive_int("num_examples", num_examples)
        self._anchor, self._fisher = {}, {}
        for path in anchor:
            a = np.array(anchor[path], dtype="float32")
            if not np.all(np.isfinite(a)):
                raise ValueError(
                    f"The memory of {path} holds NaN or infinite values."
                )
            a.flags.writeable = False
            self._anchor[path] = a
        for path in fisher:
            f = np.array(fisher[path], dtype="float32")
            if f.shape != self._anchor[path].shape:
                raise ValueError(
                    f"The anchor of {path} has shape "
                    f"{self._anchor[path].shape} but its Fisher has shape "
                    f"{f.shape}."
                )
            if not np.all(np.isfinite(f)):
                raise ValueError(
                    f"The memory of {path} holds NaN or infinite values."
                )
            if np.any(f < 0):
                raise ValueError(f"The Fisher of {path} has negative entries.")
            # Shared read-only: a memory is a value, and reading it stays O(1).
            f.flags.writeable = False
            self._fisher[path] = f
        self._kronecker = {
            path: self._checked_block(path, b) for path, b in kronecker.items()
        }
        self._diagonal = None
        self.num_examples = num_examples
        self.estimator = estimator

    def _checked_block(self, path, block):
        axes = check_kernel_axes(path, block.axes, self._anchor[path].ndim)
        block = block._replace(axes=axes)
        shape = self._anchor[path].shape
        if axes is not None:
            shape = tuple(shape[axis] for axis in axes)
        fan_in, units = block_matrix_shape(block, self._anchor[path].shape)
        rows = fan_in + (block.bias is not None)
        a, g = check_kronecker_factors(path, block.a, block.g, rows, units)
        # The bias spans the kernel's output axes (one for a Dense), or
        # is flat (a DepthwiseConv2D's, over channels and multiplier).
        bias = self._anchor[block.bias] if block.bias is not None else None
        if bias is not None and (
            bias.size != units
            or (bias.ndim > 1 and bias.shape != shape[len(shape) - bias.ndim :])
        ):
            raise ValueError(
                f"The bias {block.bias} of {path} does not have shape "
                f"{(units,)} (or the kernel's output axes)."
            )
        mask = None
        if block.mask is not None:
            mask = np.array(block.mask, dtype="float32")
            if mask.shape != (fan_in, units) or not np.all(
                (mask == 0) | (mask == 1)
            ):
                raise ValueError(
                    f"The mask of {path} must be a 0/1 array of shape "
                    f"{(fan_in, units)}."
                )
            mask.flags.writeable = False
        return KroneckerBlock(block.bias, a, g, mask, axes)

    @classmethod
    def estimate(
        cls,
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
        rank=DEFAULT_RANK,
        retained_trace=None,
    ):
        """Remembers what `model` learned from `data`.

        The memory holds the model's trainable variables at their current
        values and their Fisher on `data`; see `estimate_fisher` for the
        estimators (`exact`, `sampled`, `empirical`, `batched`), which
        layers are fast, and per-token outputs (`num_examples` then counts
        the unmasked tokens).

        A Kronecker factor larger than `rank` is kept as its top `rank`
        eigenvectors plus an isotropic remainder, the mean of the eigenvalues
        it drops (`keras_memgeom.memory.kronecker.truncate_factor`): the
        block stays positive semi-definite with the full block's trace, is
        exact on the kept eigendirections, costs `r * (fan_in + units)`
        numbers instead of `fan_in^2 + units^2`, and a training step
        evaluates its penalty in `O(r * fan_in * units)` instead of
        `O((fan_in + units) * fan_in * units)`. Smaller factors, and every
        factor with `rank=None`, stay exact.

        Args:
            model: a built Keras model, compiled with a log-likelihood loss
                unless `likelihood` is given.
            data: `(x, y)` arrays, a `tf.data.Dataset`, a `PyDataset` or an
                iterable of `(x, y)` batches.
            estimator: the Fisher estimator.
            num_samples: labels drawn per example by `sampled`.
            max_examples: use at most this many examples.
            batch_size: batch size for arrays.
            likelihood: a `keras_memgeom.memory.likelihood.Likelihood`.
            seed: seed for `sampled`.
            structure: `"diagonal"`, or `"kfac"` for Kronecker factors on
                the Dense and Conv2D layers the fast path covers.
            rank: with `structure="kfac"`, the most eigenvectors each
                Kronecker factor keeps, or `None` to keep the factors whole.
            retained_trace: with `structure="kfac"`, keep only as many
                eigenvectors (at most `rank`) as reach this share of each
                factor's trace, in `(0, 1]`; `None` keeps `rank`.

        Returns:
            A `FisherMemory`.

        Raises:
            ValueError: see `estimate_fisher`; naming `rank` or
                `retained_trace` if invalid; with `structure="kfac"`, if
                the model has no layer to factor.

        Warns:
            UserWarning: with `structure="kfac"`, naming the variables
                outside factored layers, which keep a diagonal Fisher (see
                `structure_of`).
        """
        rank, retained_trace = check_rank(rank, retained_trace)
        estimate = estimate_fisher(
            model,
            data,
            estimator=estimator,
            num_samples=num_samples,
            max_examples=max_examples,
            batch_size=batch_size,
            likelihood=likelihood,
            seed=seed,
            structure=structure,
        )
        fisher, num_examples, kronecker = (
            estimate if structure == "kfac" else (*estimate, None)
        )
        if kronecker:
            kronecker = {
                path: truncate_block(
                    KroneckerBlock(*block), rank, retained_trace
                )
                for path, block in kronecker.items()
            }
        anchor = {
            v.path: ops.convert_to_numpy(v.value)
            for v in model.trainable_variables
        }
        return cls(
            anchor,
            fisher,
            num_examples,
            estimator=estimator,
            kronecker=kronecker,
        )

    @property
    def paths(self):
        """The remembered variables' paths, in order."""
        return list(self._anchor)

    @property
    def anchor(self):
        """Dict from path to the remembered value (read-only numpy arrays)."""
        return dict(self._anchor)

    @property
    def structure(self):
        """`"kfac"` if any layer has Kronecker factors, else `"diagonal"`."""
        return "kfac" if self._kronecker else "diagonal"

    @property
    def kronecker(self):
        """Dict from a kernel's path to its `KroneckerBlock` (or empty)."""
        return dict(self._kronecker)

    def structure_of(self, path):
        """How the memory keeps one variable's Fisher.

        With `structure="kfac"` Dense, Conv1D, Conv2D (a block per group when
        grouped), DepthwiseConv2D (a block per channel), Embedding (and
        keras-hub PositionEmbedding) and matmul-shaped EinsumDense layers (so
        attention projections) and both kernels of SeparableConv2D get
        Kronecker blocks; every other variable keeps a diagonal Fisher
        (`estimate_fisher` warns once, naming them).

        Args:
            path: a remembered variable's path (see `paths`).

        Returns:
            `"kfac"` if a Kronecker block covers the variable (a layer's
            kernel or bias), else `"diagonal"`.

        Raises:
            ValueError: if the memory has no variable `path`.

        Example:

        ```python
        import keras
        import numpy as np

        import keras_memgeom

        x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
        inputs = keras.Input((4,))
        hidden = keras.layers.LayerNormalization()(inputs)
        model = keras.Model(inputs, keras.layers.Dense(3)(hidden))
        model.compile(
            "adam",
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        # Warns: the normalization's scale and offset stay diagonal.
        memory = keras_memgeom.FisherMemory.estimate(
            model, (x, np.arange(32) % 3), structure="kfac"
        )
        print({p: memory.structure_of(p) for p in memory.paths})
        ```
        """
        if path not in self._anchor:
            raise ValueError(
                f"The memory has no variable {path!r}; it remembers "
                f"{self.paths}."
            )
        covered = set(self._kronecker) | {
            b.bias for b in self._kronecker.values() if b.bias is not None
        }
        return "kfac" if path in covered else "diagonal"

    @property
    def fisher(self):
        """Dict from path to the per-example diagonal Fisher (read-only arrays).

        For a Kronecker-factored layer this is the diagonal of `A (x) G`.
        """
        if self._diagonal is None:
            fisher = dict(self._fisher)
            for path, block in self._kronecker.items():
                fisher[path], bias = block_diagonal(
                    block, self._anchor[path].shape
                )
                if bias is not None:
                    fisher[block.bias] = bias.reshape(
                        self._anchor[block.bias].shape
                    )
            for value in fisher.values():
                value.flags.writeable = False
            self._diagonal = {path: fisher[path] for path in self._anchor}
        return dict(self._diagonal)

    @property
    def precision(self):
        """Dict from path to the diagonal of the precision `n * F`."""
        return {k: self.num_examples * v for k, v in self.fisher.items()}

    def diagonal(self):
        """This memory with its Kronecker blocks replaced by their diagonals."""
        if not self._kronecker:
            return self
        return FisherMemory(
            self._anchor, self.fisher, self.num_examples, self.estimator
        )

    def match(self, model):
        """Pairs each remembered variable with a variable that `model` trains.

        Keras paths carry auto-numbered names (`sequential_3/dense_7/kernel`),
        so the same architecture built elsewhere gets other paths. Variables
        are matched by path when every path is found; otherwise by order,
        when the model has as many trainable variables, each of the same
        kind (`kernel`, `bias`, ...) and shape, with a warning listing the
        pairs whose paths differ.

        A weight that `enable_lora` froze is matched too (a memory of the
        pretrained model remembers it): the pair holds the frozen variable,
        whose penalty is read at the layer's effective weight `W + s A B`
        (see `LoraRegularizer`). The model's variables then count as they
        did before `enable_lora`, the factors in place of their weight.

        Args:
            model: a built Keras model.

        Returns:
            A list of `(path, variable)` pairs.

        Raises:
            ValueError: if the memory does not fit the model, naming what
                differs: the variables missing on either side, or the first
                pair with another shape or kind of variable.
        """
        variables = list(model.trainable_variables)
        # A memory from before `enable_lora` remembers the weights LoRA
        # froze; `attach` penalizes them through their factors.
        pretrained = pretrained_variables(model)
        by_path = {v.path: v for v in pretrained + variables}
        missing = [path for path in self._anchor if path not in by_path]
        by_order = bool(missing)
        same_count = [
            c for c in (variables, pretrained) if len(c) == len(self._anchor)
        ]
        if not by_order:
            pairs = [(path, by_path[path]) for path in self._anchor]
        elif same_count:
            pairs = list(zip(self._anchor, same_count[0]))
        else:
            extra = [v.path for v in variables if v.path not in self._anchor]
            frozen = [v.path for v in model.weights if v.path in missing]
            raise ValueError(
                "The memory does not fit the model: the memory's variable "
                f"{missing[0]!r}"
                + (f" (and {_few(missing[1:])})" if len(missing) > 1 else "")
                + " is not among the model's trainable variables, and "
                f"the memory has {len(self._anchor)} variables where the "
                f"model has {len(variables)} (the model's {_few(extra)} are "
                "not in the memory)."
                + (
                    f" The model has {_few(frozen)} but does not train them "
                    "(a penalty on them would be constant): estimate the "
                    "memory with those layers frozen as they are now "
                    "(`layer.trainable = False`), or train them again."
                    if frozen
                    else ""
                )
            )
        how = " (matched by order)" if by_order else ""
        for path, variable in pairs:
            if tuple(variable.shape) != self._anchor[path].shape:
                raise ValueError(
                    f"The memory does not fit the model{how}: {path!r} has "
                    f"shape {self._anchor[path].shape} in the memory but "
                    f"{variable.path!r} has shape {tuple(variable.shape)}."
                )
            if by_order and path.rsplit("/", 1)[-1] != variable.name:
                raise ValueError(
                    f"The memory does not fit the model{how}: the memory's "
                    f"{path!r} would be the model's {variable.path!r}, "
                    "another kind of variable."
                )
        if by_order:
            renamed = [(path, v.path) for path, v in pairs if path != v.path]
            listed = ", ".join(f"{a!r} -> {b!r}" for a, b in renamed[:4])
            more = f" and {len(renamed) - 4} more" if len(renamed) > 4 else ""
            warnings.warn(
                "The memory's variable paths are not the model's; matching "
                f"them by order and shape instead: {listed}{more}.",
                stacklevel=3,
            )
        return pairs

    def penalty(self, model, *, num_train_examples, strength=1.0):
        """`strength/2 * n/num_train_examples * sum F (theta - anchor)^2`.

        A weight that `enable_lora` froze counts at the weight its layer
        computes with, `W + lora_alpha / lora_rank * A @ B`.

        Args:
            model: the model whose current weights are penalized.
            num_train_examples: the number of examples the training loss
                averages over.
            strength: `1` is the Bayesian (Laplace) scaling; EWC's lambda.

        Returns:
            A scalar tensor.

        Raises:
            ValueError: if the memory does not fit the model or the
                arguments are invalid.
        """
        scale = penalty_scale(self.num_examples, num_train_examples, strength)
        frozen = lora_layers(model)
        values = {
            path: current_value(variable, frozen)
            for path, variable in self.match(model)
        }
        terms = [
            quadratic_penalty(values[path], self._anchor[path], fisher, scale)
            for path, fisher in self._fisher.items()
        ]
        for path, block in self._kronecker.items():
            bias = values[block.bias] if block.bias is not None else None
            anchor_bias = (
                self._anchor[block.bias] if block.bias is not None else None
            )
            anchor = kernel_matrix(self._anchor[path], block)
            terms.append(
                kronecker_penalty(
                    values[path],
                    bias,
                    anchor,
                    anchor_bias,
                    block.a,
                    block.g,
                    scale,
                    block.mask,
                    block.axes,
                )
            )
        return ops.sum(ops.stack(terms))

    def effective_dimension(self, prior_precision):
        """Dimensions the memory occupies: `sum P / (P + alpha)`, `P = n F`.

        The sum runs over the eigenvalues of the precision: the diagonal
        entries, and for a Kronecker block the products `n lambda_i mu_j`
        of its factors' eigenvalues (counted under the kernel's path).

        Args:
            prior_precision: `alpha > 0`, the precision of the prior.

        Returns:
            `(total, per_variable)`: a float and a dict from path to float.

        Raises:
            ValueError: if `prior_precision` is not a finite positive number.
        """
        prior_precision = check_positive("prior_precision", prior_precision)
        per_variable = {
            path: float(np.sum(p / (p + prior_precision), dtype="float64"))
            for path, p in (
                (k, self.num_examples * f) for k, f in self._fisher.items()
            )
        }
        for path, block in self._kronecker.items():
            # A layer's block counts once, under its kernel's path.
            per_variable[path] = kronecker_effective_dimension(
                block.a, block.g, self.num_examples, prior_precision
            )
            if block.bias is not None:
                per_variable[block.bias] = 0.0
        return sum(per_variable.values()), {
            p: per_variable[p] for p in self._anchor
        }

    def save(self, path):
        """Writes the memory to `path` (versioned, atomic, checksummed)."""
        write_memory_file(
            path,
            self._anchor,
            self._fisher,
            self.num_examples,
            self.estimator,
            self._kronecker,
        )

    @classmethod
    def load(cls, path):
        """Reads a memory written by `save`, under any backend.

        Raises:
            FileNotFoundError: if there is no file.
            ValueError: if it is corrupt, truncated or of a newer format.
        """
        # The file holds the constructor's arguments, in its order.
        return cls(*read_memory_file(path))

    def __repr__(self):
        size = sum(a.size for a in self._anchor.values())
        return (
            f"<FisherMemory {len(self._anchor)} variables, {size} parameters, "
            f"n={self.num_examples}, estimator={self.estimator}, "
            f"structure={self.structure}; trainable variables only, "
            "not normalization statistics>"
        )


def _few(paths, count=4):
    """Up to `count` paths, quoted, for an error message."""
    listed = ", ".join(repr(p) for p in paths[:count])
    return listed + (
        f" and {len(paths) - count} more" if len(paths) > count else ""
    )
