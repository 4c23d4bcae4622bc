"""What a model learned from data, kept as a Fisher ellipsoid."""

import warnings

import numpy as np
from keras import ops

from keras_memgeom.memory.fisher import estimate_fisher
from keras_memgeom.memory.memory_file import read_memory_file, write_memory_file
from keras_memgeom.memory.penalty import penalty_scale, quadratic_penalty
from keras_memgeom.utils.checks import check_number, check_positive_int


class FisherMemory:
    """A memory: the anchor `theta_A`, its diagonal Fisher `F_A` and `n_A`.

    To second order the log-posterior after the remembered data is
    `-1/2 n_A (theta - theta_A)^T F_A (theta - theta_A)`; `F_A` is the
    per-example mean, so `n_A * F_A` is the precision.

    Args:
        anchor: dict from variable path to array, the remembered weights.
        fisher: dict with the same keys and shapes, the per-example mean
            diagonal Fisher (non-negative).
        num_examples: `n_A`, the number of examples remembered.
        estimator: how the Fisher was estimated (kept for the record).

    Raises:
        ValueError: if the keys or shapes disagree, values are not finite,
            the Fisher is negative or `num_examples` is not positive.

    Example:
    >>> memory = FisherMemory.estimate(model, (x_a, y_a))
    >>> keras_memgeom.attach(model, memory, num_train_examples=len(x_b))
    >>> model.fit(x_b, y_b)
    """

    def __init__(self, anchor, fisher, num_examples, estimator=None):
        if set(anchor) != set(fisher):
            raise ValueError(
                "`anchor` and `fisher` must name the same variables; they differ "
                f"in {sorted(set(anchor) ^ set(fisher))}."
            )
        num_examples = check_positive_int("num_examples", num_examples)
        self._anchor, self._fisher = {}, {}
        for path in anchor:
            a = np.array(anchor[path], dtype="float32")
            f = np.array(fisher[path], dtype="float32")
            if a.shape != f.shape:
                raise ValueError(
                    f"The anchor of {path} has shape {a.shape} but its Fisher has shape {f.shape}."
                )
            if not (np.all(np.isfinite(a)) and np.all(np.isfinite(f))):
                raise ValueError(f"The memory of {path} holds NaN or infinite values.")
            if np.any(f < 0):
                raise ValueError(f"The Fisher of {path} has negative entries.")
            # Shared read-only: a memory is a value, and reading it stays O(1).
            a.flags.writeable = f.flags.writeable = False
            self._anchor[path], self._fisher[path] = a, f
        self.num_examples = int(num_examples)
        self.estimator = estimator

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
    ):
        """Remembers what `model` learned from `data`.

        The memory holds the model's trainable variables at their current
        values and their diagonal Fisher on `data`; see `estimate_fisher` for
        the estimators (`exact`, `sampled`, `empirical`, `batched`) and which
        layers are fast.

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

        Returns:
            A `FisherMemory`.

        Raises:
            ValueError: see `estimate_fisher`.
        """
        fisher, num_examples = estimate_fisher(
            model,
            data,
            estimator=estimator,
            num_samples=num_samples,
            max_examples=max_examples,
            batch_size=batch_size,
            likelihood=likelihood,
            seed=seed,
        )
        anchor = {v.path: ops.convert_to_numpy(v.value) for v in model.trainable_variables}
        return cls(anchor, fisher, num_examples, estimator=estimator)

    @property
    def paths(self):
        """The remembered variables' paths, in order."""
        return list(self._anchor)

    @property
    def anchor(self):
        """Dict from path to the remembered value (read-only numpy arrays)."""
        return dict(self._anchor)

    @property
    def fisher(self):
        """Dict from path to the per-example diagonal Fisher (read-only arrays)."""
        return dict(self._fisher)

    @property
    def precision(self):
        """Dict from path to the precision `n * F`."""
        return {k: self.num_examples * v for k, v in self._fisher.items()}

    def match(self, model):
        """Pairs each remembered variable with a trainable variable of `model`.

        Keras paths carry auto-numbered names (`sequential_3/dense_7/kernel`),
        so the same architecture built elsewhere gets other paths. Variables
        are matched by path when every path is found; otherwise by order and
        shape (with a warning saying so).

        Args:
            model: a built Keras model.

        Returns:
            A list of `(path, variable)` pairs.

        Raises:
            ValueError: naming the first variable that matches neither way.
        """
        variables = list(model.trainable_variables)
        by_path = {v.path: v for v in variables}
        if all(path in by_path for path in self._anchor):
            pairs = [(path, by_path[path]) for path in self._anchor]
        elif len(variables) == len(self._anchor):
            pairs = list(zip(self._anchor, variables))
            warnings.warn(
                "The memory's variable paths are not the model's; matching "
                "them by order and shape instead.",
                stacklevel=3,
            )
        else:
            missing = next(path for path in self._anchor if path not in by_path)
            raise ValueError(
                f"The memory does not fit the model: variable {missing!r} is not "
                f"among the model's trainable variables, and the memory has "
                f"{len(self._anchor)} variables where the model has {len(variables)}."
            )
        for path, variable in pairs:
            if tuple(variable.shape) != self._anchor[path].shape:
                raise ValueError(
                    f"The memory does not fit the model: {path!r} has shape "
                    f"{self._anchor[path].shape} in the memory but "
                    f"{variable.path!r} has shape {tuple(variable.shape)}."
                )
        return pairs

    def penalty(self, model, *, num_train_examples, strength=1.0):
        """`strength/2 * n/num_train_examples * sum F (theta - anchor)^2`.

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
        terms = [
            quadratic_penalty(variable.value, self._anchor[path], self._fisher[path], scale)
            for path, variable in self.match(model)
        ]
        return ops.sum(ops.stack(terms))

    def effective_dimension(self, prior_precision):
        """Dimensions the memory occupies: `sum P / (P + alpha)`, `P = n F`.

        Args:
            prior_precision: `alpha > 0`, the precision of the prior.

        Returns:
            `(total, per_variable)`: a float and a dict from path to float.

        Raises:
            ValueError: if `prior_precision` is not a finite positive number.
        """
        prior_precision = check_number(
            "prior_precision", prior_precision, minimum=0.0, inclusive_minimum=False
        )
        per_variable = {
            path: float(np.sum(p / (p + prior_precision), dtype="float64"))
            for path, p in self.precision.items()
        }
        return sum(per_variable.values()), per_variable

    def save(self, path):
        """Writes the memory to `path` (versioned, atomic, checksummed)."""
        write_memory_file(path, self._anchor, self._fisher, self.num_examples, self.estimator)

    @classmethod
    def load(cls, path):
        """Reads a memory written by `save`, under any backend.

        Raises:
            FileNotFoundError: if there is no file.
            ValueError: if it is corrupt, truncated or of a newer format.
        """
        anchor, fisher, num_examples, estimator = read_memory_file(path)
        return cls(anchor, fisher, num_examples, estimator=estimator)

    def __repr__(self):
        size = sum(a.size for a in self._anchor.values())
        return (
            f"<FisherMemory {len(self._anchor)} variables, {size} parameters, "
            f"n={self.num_examples}, estimator={self.estimator}>"
        )
