"""RegMean: one linear layer of several models merged in closed form."""

import numpy as np

from keras_memgeom.src.utils.checks import check_number

# Directions no model's inputs reach (always-zero pixels) get this much
# precision, relative to the mean diagonal, pulling them to the average.
_RIDGE = 1e-6


def regmean(kernels, grams, *, weights=None, alpha=0.9):
    """The kernel that best reproduces every model's outputs on its inputs.

    RegMean (Jin et al. 2023, "Dataless Knowledge Fusion by Merging Weights
    of Language Models"): for a linear map `y = x W`, the merged `W`
    minimizing `sum_k w_k ||X_k W - X_k W_k||^2` is

        W* = (sum_k w_k G_k)^-1 sum_k w_k G_k W_k,   G_k = X_k^T X_k,

    the Gram matrix of model `k`'s inputs to the layer on its data. A bias
    is merged with the kernel by appending a 1 to the inputs (a last row of
    `W_k` and a last row and column of `G_k`). As the paper does, each
    Gram matrix's off-diagonal entries are scaled by `alpha`,
    `G_k <- alpha G_k + (1 - alpha) diag(G_k)`: `alpha = 1` is the exact
    least-squares merge, smaller values trust the input correlations less
    (`alpha = 0` weights each input row by its second moment alone).
    Directions that no model's inputs reach (a pixel that is always 0) fall
    back to the weighted average, through a ridge of `1e-6` times the mean
    diagonal.

    Args:
        kernels: list of `(inputs, units)` arrays, one per model (with the
            bias as a last row where the Gram matrices carry the 1).
        grams: list of `(inputs, inputs)` Gram matrices, one per model.
        weights: a weight per model, non-negative, summing to 1 (`None`:
            equal).
        alpha: in `[0, 1]`, the scale of the off-diagonal Gram entries.

    Returns:
        The merged `(inputs, units)` kernel (float64).

    Raises:
        ValueError: if `alpha` is out of range or the shapes disagree.

    Example:

    ```python
    import numpy as np

    import keras_memgeom

    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 4))
    x_aug = np.concatenate([x, np.ones((100, 1))], axis=1)  # a 1 for the bias
    w_a, w_b = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    merged = keras_memgeom.merging.regmean(
        [w_a, w_b], [x_aug.T @ x_aug] * 2, alpha=1.0
    )
    print(np.allclose(merged, (w_a + w_b) / 2))  # True: same inputs
    ```
    """
    alpha = check_number("alpha", alpha, minimum=0.0, maximum=1.0)
    if len(kernels) != len(grams):
        raise ValueError(
            f"`regmean` needs one Gram matrix per kernel: {len(kernels)} "
            f"kernels, {len(grams)} Gram matrices."
        )
    weights = (
        np.full(len(kernels), 1.0 / len(kernels))
        if weights is None
        else np.asarray(weights, "float64")
    )
    size = kernels[0].shape[0]
    precision = np.zeros((size, size))
    moment = np.zeros(kernels[0].shape)
    average = np.zeros(kernels[0].shape)
    for w, kernel, gram in zip(weights, kernels, grams):
        kernel, gram = (
            np.asarray(kernel, "float64"),
            np.asarray(gram, "float64"),
        )
        if gram.shape != (size, size) or kernel.shape != kernels[0].shape:
            raise ValueError(
                "`regmean` needs kernels of one shape and Gram matrices "
                f"matching their rows; got a kernel of shape {kernel.shape} "
                f"with a Gram matrix of shape {gram.shape}."
            )
        gram = alpha * gram + (1.0 - alpha) * np.diag(np.diag(gram))
        precision += w * gram
        moment += w * gram @ kernel
        average += w * kernel
    ridge = _RIDGE * max(
        float(np.mean(np.diag(precision))), np.finfo("float64").tiny
    )
    return np.linalg.solve(
        precision + ridge * np.eye(size), moment + ridge * average
    )
