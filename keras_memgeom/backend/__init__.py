"""The few things `keras.ops` cannot say: the contract, written once here.

Each function below is the contract: what it computes, for which shapes
and dtypes, and what gradient it has. It calls the module of the active
backend (`jax.py`, `tensorflow.py` or `torch.py`, whose functions say in
one line how that backend does it). The functions fall into five groups:
tracing and autodiff (`compile_function`, `linearize`, `vectorize`,
`differentiable_linearize`); work spread over devices (`batch_step`,
`batch_total`, `global_batch_position`, `check_distribution`); the memory
penalties of every training step (`memory_quadratic`,
`kronecker_quadratic`); and exact numbers and where a run ran
(`device_constant`, `full_precision_matmul`, `free_memory`,
`device_description`).

This is the only place in the package that branches on the backend.
"""

import keras

_BACKEND = keras.backend.backend()

if _BACKEND == "jax":
    from keras_memgeom.backend import jax as _impl
elif _BACKEND == "tensorflow":
    from keras_memgeom.backend import tensorflow as _impl
elif _BACKEND == "torch":
    from keras_memgeom.backend import torch as _impl
else:
    raise ImportError(
        f"keras_memgeom supports the jax, tensorflow and torch backends; "
        f"KERAS_BACKEND is {_BACKEND!r}."
    )


def compile_function(fn):
    """Traces `fn` once for speed: `jax.jit`, `tf.function`, or `fn` on torch.

    Args:
        fn: a function of tensors.

    Returns:
        The compiled function, called like `fn`.

    Example:

    ```python
    import keras_memgeom
    from keras import ops

    square = keras_memgeom.backend.compile_function(lambda x: ops.square(x))
    print(square(ops.ones((2,))))
    ```
    """
    return _impl.compile_function(fn)


def linearize(fn, primals):
    """Evaluates `fn` and returns the pullback of its outputs.

    Args:
        fn: `fn(primals) -> (outputs, aux)`.
        primals: a list of tensors.

    Returns:
        `(outputs, aux, pullback)`, where `pullback(cotangents)` maps a stack
        of `K` output cotangents (shape `(K,) + outputs.shape`, the outputs'
        dtype) to the list of stacked vector-Jacobian products with respect
        to `primals` (each with a leading axis of size `K`, shaped and typed
        like its primal).

    Example:

    ```python
    import keras_memgeom
    from keras import ops

    outputs, _, pullback = keras_memgeom.backend.linearize(
        lambda p: (ops.square(p[0]), ()), [ops.ones((3,))]
    )
    (grads,) = pullback(ops.ones((1, 3)))  # 2 * p, shape (1, 3)
    ```
    """
    return _impl.linearize(fn, primals)


def vectorize(fn):
    """Maps `fn` over the leading axis of all its arguments.

    Args:
        fn: a function of tensors, written for one example.

    Returns:
        The mapped function: called on arguments with a common leading axis
        of size `N`, it returns `fn`'s outputs stacked along a leading axis
        of size `N` (`jax.vmap`, `tf.map_fn` or `torch.func.vmap`).

    Example:

    ```python
    import keras_memgeom
    from keras import ops

    row_sums = keras_memgeom.backend.vectorize(lambda row: ops.sum(row))
    sums = row_sums(ops.ones((4, 3)))  # shape (4,)
    ```
    """
    return _impl.vectorize(fn)


def differentiable_linearize(fn, primals):
    """As `linearize`, with a pullback that enclosing autodiff differentiates.

    The pullback's results stay differentiable by the autodiff around the call
    (a `jax.grad` around a `jax.vjp`, nested `tf.GradientTape`s, torch
    `autograd.grad(create_graph=True)` under `torch.enable_grad()`), so a
    loss built from gradients (e.g. a Fisher trace) can be trained on.

    Args:
        fn: `fn(primals) -> (outputs, aux)`.
        primals: a list of tensors.

    Returns:
        `(outputs, aux, pullback)`, as `linearize` returns them.

    Example:

    ```python
    import keras_memgeom
    from keras import ops

    outputs, _, pullback = keras_memgeom.backend.differentiable_linearize(
        lambda p: (ops.square(p[0]), ()), [ops.ones((3,))]
    )
    (grads,) = pullback(ops.ones((1, 3)))
    ```
    """
    return _impl.differentiable_linearize(fn, primals)


def batch_step(function, variables):
    """A step that sums `function` over batches where the work runs.

    Under the active `keras.distribution` (jax) the batch is placed with its
    data layout, split over the batch axis, so per-example work runs on
    every device and the sums are reduced inside the compiled step; under a
    `tf.distribute` strategy with several replicas (tensorflow) the rows are
    dealt to the replicas and `strategy.run` computes each replica's share,
    every replica keeping its own running sums until `batch_total`. Torch
    refuses a distribution (`check_distribution`). The sums carry no
    gradient.

    Args:
        function: `function(values, *batch) -> (sums, checks)`: `values` the
            current values of `variables`, `batch` tensors sharing a leading
            batch axis, `sums` a structure of tensors summed over the batch,
            `checks` a list of scalar tensors.
        variables: the Keras variables whose values `function` reads.

    Returns:
        `step(totals, batch) -> (totals, checks)`: `batch` a tuple of host
        arrays (nested structures allowed); `totals` `None` the first time,
        then what the previous call returned; `checks` one list of device
        scalars per device share.

    Raises:
        NotImplementedError: on torch when a `keras.distribution` is set; on
            tensorflow under a strategy whose replicas span several workers.

    Example:

    ```python
    import keras_memgeom
    import keras
    import numpy as np
    from keras import ops

    scale = keras.Variable(2.0)
    step = keras_memgeom.backend.batch_step(
        lambda values, x: ([ops.sum(x, axis=0) * values[0]], []), [scale]
    )
    totals = None
    for _ in range(2):
        totals, _ = step(totals, (np.ones((4, 3), "float32"),))
    print(keras_memgeom.backend.batch_total(totals))  # [[16. 16. 16.]]
    ```
    """
    return _impl.batch_step(function, variables)


def batch_total(totals):
    """The totals of `batch_step`, reduced across replicas once.

    Args:
        totals: what the last call of a `batch_step` step returned.

    Returns:
        The same structure of tensors, summed across replicas under a
        `tf.distribute` strategy; unchanged elsewhere (jax reduces inside the
        step).

    Example:

    ```python
    import keras_memgeom
    import numpy as np
    from keras import ops

    step = keras_memgeom.backend.batch_step(
        lambda values, x: ([ops.sum(x)], []), []
    )
    totals, _ = step(None, (np.ones((4, 3), "float32"),))
    print(keras_memgeom.backend.batch_total(totals))  # [12.]
    ```
    """
    return _impl.batch_total(totals)


def global_batch_position(local_batch_size):
    """Where this process's rows start in the global batch, and its size.

    Args:
        local_batch_size: the rows of the batch this process holds.

    Returns:
        `(offset, global_size)`, two ints: under a `keras.distribution` on
        several jax processes, `(process_index * local_batch_size,
        process_count * local_batch_size)` (Keras lays their rows out in
        process order); elsewhere `(0, local_batch_size)`.

    Example:

    ```python
    import keras_memgeom

    # (0, 32) in one process.
    print(keras_memgeom.backend.global_batch_position(32))
    ```
    """
    return _impl.global_batch_position(local_batch_size)


def check_distribution():
    """Raises where a distribution is set that the backend cannot run.

    Every `keras.distribution` runs on jax, and a `tf.distribute` strategy
    runs where its scope puts the work; Keras accepts a `keras.distribution`
    on torch but would run on one device.

    Raises:
        NotImplementedError: on torch, when a `keras.distribution` is set.

    Example:

    ```python
    import keras_memgeom

    # Nothing to say without a distribution.
    keras_memgeom.backend.check_distribution()
    ```
    """
    return _impl.check_distribution()


def memory_quadratic(value, anchor, fisher):
    """`sum(fisher * (value - anchor)^2)`, differentiated without autodiff.

    The gradient with respect to `value`, `2 * fisher * (value - anchor)`,
    is given by a custom gradient rather than taken by autodiff through the
    products. On jax and tensorflow it is recomputed from the three inputs
    in the backward pass, so a compiled step fuses it into the optimizer's
    update and keeps no product between the passes; eager torch keeps the
    forward's product `fisher * (value - anchor)` instead, which takes fewer
    passes there. `anchor` and `fisher` get no gradient.

    Args:
        value: a tensor of any shape, floating dtype.
        anchor: a tensor of the same shape and dtype.
        fisher: a tensor of the same shape and dtype, non-negative.

    Returns:
        A scalar tensor of `value`'s dtype.

    Example:

    ```python
    import keras_memgeom
    from keras import ops

    value = ops.convert_to_tensor([1.0, 2.0])
    print(keras_memgeom.backend.memory_quadratic(
        value, ops.zeros((2,)), ops.ones((2,))
    ))  # 5.0
    ```
    """
    return _impl.memory_quadratic(value, anchor, fisher)


def kronecker_quadratic(diff, a, g):
    """`sum(diff * (a @ diff @ g))`, differentiated without autodiff.

    The quadratic form `vec(D)^T (a (x) g) vec(D)` of a Kronecker-factored
    precision, `a (x) g` never formed. A factor is a symmetric matrix or a
    `(vectors, values, remainder)` triple standing for `V diag(values) V^T +
    remainder (I - V V^T)` (a truncated factor, `EigenFactor`), applied as
    `remainder x + V ((values - remainder) * (V^T x))`: two thin matmuls,
    `O(r * rows * units)`, and no `size x size` buffer; or a 1-D tensor,
    the diagonal of a diagonal factor (an `Embedding`'s token
    frequencies), applied as a broadcast multiply; or a stack of
    matrices `(groups, size, size)` with `diff` a stack `(groups, rows,
    units)`, one quadratic per group summed (a DepthwiseConv2D's blocks
    per channel), applied as batched matmuls. The gradient with
    respect to `diff`, `2 a diff g` (the factors are symmetric), is the
    forward pass's product, kept for the backward pass by a custom gradient
    (jax `custom_vjp`, tf `custom_gradient`, torch `autograd.Function`):
    the backward pass costs one multiply and no matmul. The factors get no
    gradient.

    Args:
        diff: a `(rows, units)` matrix, or `(groups, rows, units)` with
            grouped factors; floating dtype.
        a: the `(rows, rows)` factor, a triple of `(rows, r)`
            eigenvectors (orthonormal columns), `(r,)` eigenvalues and a
            scalar remainder, or a diagonal `(rows,)`; `diff`'s dtype.
        g: the `(units, units)` factor, or such a triple or diagonal for
            `units`.

    Returns:
        A scalar tensor of `diff`'s dtype, non-negative when the factors
        are positive semi-definite.

    Example:

    ```python
    import keras_memgeom
    from keras import ops

    diff = ops.ones((2, 3))
    a = (ops.convert_to_tensor([[1.0], [0.0]]), ops.ones((1,)) * 4.0,
         ops.convert_to_tensor(1.0))  # diag(4, 1)
    print(keras_memgeom.backend.kronecker_quadratic(
        diff, a, ops.eye(3)
    ))  # 3 * (4 + 1) = 15.0
    ```
    """
    return _impl.kronecker_quadratic(diff, a, g)


def device_constant(value, dtype):
    """A tensor of `value` on the device Keras computes on, made untraced.

    Made outside any trace even when called inside one, so that every traced
    step can keep and reuse it.

    Args:
        value: an array.
        dtype: the tensor's dtype.

    Returns:
        The tensor, shaped like `value`.

    Example:

    ```python
    import keras_memgeom
    import numpy as np

    eye = keras_memgeom.backend.device_constant(np.eye(3), "float32")
    ```
    """
    return _impl.device_constant(value, dtype)


def full_precision_matmul():
    """A context manager under which float32 matmuls run in full float32.

    GPUs default to TF32 or other lower-precision passes for float32 matmuls
    and convolutions; under it they run in full float32, and the previous
    settings come back on exit.

    Returns:
        A context manager.

    Example:

    ```python
    import keras_memgeom
    from keras import ops

    with keras_memgeom.backend.full_precision_matmul():
        product = ops.matmul(ops.ones((2, 2)), ops.ones((2, 2)))
    ```
    """
    return _impl.full_precision_matmul()


def free_memory():
    """Bytes of memory still free on the device Keras computes on.

    Returns:
        An int, or `None` where the backend does not say (a TensorFlow
        GPU, which reports only what it uses). On a CPU, the host's
        available memory.

    Example:

    ```python
    import keras_memgeom

    print(keras_memgeom.backend.free_memory())
    ```
    """
    return _impl.free_memory()


def device_description():
    """The backend's version and the devices it computes on, in one line.

    Returns:
        A string, e.g. `"jax 0.4.30 on gpu: NVIDIA H100 (cuda:0)"`.

    Example:

    ```python
    import keras_memgeom

    print(keras_memgeom.backend.device_description())
    ```
    """
    return _impl.device_description()


__all__ = [
    "batch_step",
    "batch_total",
    "check_distribution",
    "compile_function",
    "device_constant",
    "device_description",
    "differentiable_linearize",
    "free_memory",
    "full_precision_matmul",
    "global_batch_position",
    "kronecker_quadratic",
    "linearize",
    "memory_quadratic",
    "vectorize",
]
