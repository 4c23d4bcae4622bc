"""The backend contract (`keras_memgeom.backend`) on torch."""

import contextlib

import keras
import torch
from keras.src.backend.torch import core as keras_torch_core
from keras.src.backend.torch import nn as keras_torch_nn

from keras_memgeom.src.utils.host_memory import host_free_memory


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
    return fn


def linearize(fn, primals):
    """Evaluates `fn` and returns the pullback of its outputs.

    Args:
        fn: `fn(primals) -> (outputs, aux)`.
        primals: a list of tensors.

    Returns:
        `(outputs, aux, pullback)`, where `pullback(cotangents)` maps a stack
        of `K` output cotangents (shape `(K,) + outputs.shape`) to the list of
        stacked vector-Jacobian products with respect to `primals` (each with
        a leading axis of size `K`).

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
    with torch.enable_grad():
        outputs, vjp_fn, aux = torch.func.vjp(fn, primals, has_aux=True)

    def pullback(cotangents):
        with torch.enable_grad():
            return torch.func.vmap(vjp_fn)(cotangents)[0]

    return outputs, aux, pullback


@contextlib.contextmanager
def _without_memory_format_hints():
    # Keras makes conv inputs channels-last contiguous, a layout hint that
    # vmap cannot clone; the values are the same without it.
    original = keras_torch_nn._maybe_convert_to_channels_last
    keras_torch_nn._maybe_convert_to_channels_last = lambda tensor: tensor
    try:
        yield
    finally:
        keras_torch_nn._maybe_convert_to_channels_last = original


def vectorize(fn):
    """Maps `fn` over the leading axis of all its arguments.

    Args:
        fn: a function of tensors, written for one example.

    Returns:
        The mapped function (`jax.vmap`, `tf.vectorized_map` or
        `torch.func.vmap` of `fn`).

    Example:

    ```python
    import keras_memgeom
    from keras import ops

    row_sums = keras_memgeom.backend.vectorize(lambda row: ops.sum(row))
    sums = row_sums(ops.ones((4, 3)))  # shape (4,)
    ```
    """

    def mapped(*args):
        with _without_memory_format_hints():
            return torch.func.vmap(fn)(*args)

    return mapped


def differentiable_linearize(fn, primals):
    """As `linearize`, with a pullback that enclosing autodiff differentiates.

    The pullback's results stay differentiable by the autodiff around the call
    (a `jax.grad` around a `jax.vjp`, nested `tf.GradientTape`s, torch
    `autograd.grad(create_graph=True)`), so a loss built from gradients (e.g.
    a Fisher trace) can be trained on.

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
    # Plain autograd with `create_graph=True`: one backward pass per
    # cotangent, each recorded for the enclosing backward pass. Cheaper than
    # `torch.func.vjp` + `vmap` for the few cotangents of a training step.
    with torch.enable_grad():
        primals = [p.detach().requires_grad_() for p in primals]
        outputs, aux = fn(primals)

    def pullback(cotangents):
        with torch.enable_grad():
            grads = [
                torch.autograd.grad(
                    outputs,
                    primals,
                    grad_outputs=c,
                    create_graph=True,
                    allow_unused=True,
                )
                for c in cotangents
            ]
        return [
            torch.stack(
                [
                    g[i] if g[i] is not None else torch.zeros_like(p)
                    for g in grads
                ]
            )
            for i, p in enumerate(primals)
        ]

    return outputs, aux, pullback


@contextlib.contextmanager
def full_precision_matmul():
    """A context manager under which float32 matmuls run in full float32.

    GPUs default to TF32 or other lower-precision passes for float32 matmuls
    and convolutions; the previous settings come back on exit.

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
    # GPUs default to TF32 (10-bit mantissa) convolutions, and
    # `set_float32_matmul_precision("high")` to TF32 matmuls.
    matmul = torch.get_float32_matmul_precision()
    cudnn = torch.backends.cudnn
    if hasattr(cudnn, "conv") and hasattr(cudnn.conv, "fp32_precision"):
        # torch >= 2.9: reading the legacy `allow_tf32` flags after the new
        # per-operator ones were set is an error, so use only the new ones.
        saved = (cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision)
        torch.set_float32_matmul_precision("highest")
        cudnn.conv.fp32_precision = cudnn.rnn.fp32_precision = "ieee"
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(matmul)
            cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision = saved
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, cudnn.allow_tf32)
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(matmul)
        torch.backends.cuda.matmul.allow_tf32, cudnn.allow_tf32 = saved


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
    device = torch.device(keras_torch_core.get_device())
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{torch.get_num_threads()} threads"
    return f"torch {torch.__version__} on {device.type}: {name} ({device})"


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
    device = torch.device(keras_torch_core.get_device())
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        return host_free_memory()
    return None


def device_constant(value, dtype):
    """A tensor of `value` on the device Keras computes on, made untraced.

    Made outside any trace even when called inside one, so that every traced
    step can keep and reuse it.

    Args:
        value: an array.
        dtype: the tensor's dtype.

    Returns:
        The tensor.

    Example:

    ```python
    import keras_memgeom
    import numpy as np

    eye = keras_memgeom.backend.device_constant(np.eye(3), "float32")
    ```
    """
    # On the device Keras computes on, copied there once.
    return keras_torch_core.convert_to_tensor(value, dtype=dtype)


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
    from keras.src.distribution import distribution_lib

    if distribution_lib.distribution() is not None:
        raise NotImplementedError(
            "keras.distribution does not distribute the torch backend in "
            f"this Keras ({keras.__version__}): the work would silently run "
            "on one device. Use the jax backend for DataParallel or "
            "ModelParallel, or unset the distribution."
        )


def batch_step(function, variables):
    """A step that sums `function` over batches where the work runs.

    Under the active `keras.distribution` (jax) the batch is placed with its
    data layout, split over the batch axis, and the sums are reduced inside
    the compiled step; under a `tf.distribute` strategy with several replicas
    (tensorflow) the rows are dealt to the replicas and `strategy.run`
    computes each replica's share, every replica keeping its own running sums
    until `batch_total`.

    Args:
        function: `function(values, *batch) -> (sums, checks)`: `values` the
            current values of `variables`, `batch` tensors sharing a leading
            batch axis, `sums` a structure of tensors summed over the batch,
            `checks` a list of scalar tensors.
        variables: the Keras variables whose values `function` reads.

    Returns:
        `step(totals, batch) -> (totals, checks)`: `batch` a tuple of host
        arrays; `totals` `None` the first time, then what the previous call
        returned; `checks` one list of device scalars per device share.

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

    def step(totals, batch):
        check_distribution()
        batch = keras.tree.map_structure(
            keras_torch_core.convert_to_tensor, batch
        )
        sums, checks = function([v.value for v in variables], *batch)
        # Sums of gradients need none of their own: kept with their graph,
        # the totals would hold every batch's activations.
        sums, checks = keras.tree.map_structure(
            torch.Tensor.detach, (sums, checks)
        )
        if totals is not None:
            sums = keras.tree.map_structure(torch.add, totals, sums)
        return sums, [checks]

    return step


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
    import keras
    import numpy as np
    from keras import ops

    step = keras_memgeom.backend.batch_step(
        lambda values, x: ([ops.sum(x)], []), []
    )
    totals, _ = step(None, (np.ones((4, 3), "float32"),))
    print(keras_memgeom.backend.batch_total(totals))  # [12.]
    ```
    """
    return totals


def global_batch_position(local_batch_size):
    """Where this process's rows start in the global batch, and its size.

    Args:
        local_batch_size: the rows of the batch this process holds.

    Returns:
        `(offset, global_size)`: under a `keras.distribution` on several jax
        processes, `(process_index * local_batch_size, process_count *
        local_batch_size)` (Keras lays their rows out in process order);
        elsewhere `(0, local_batch_size)`.

    Example:

    ```python
    import keras_memgeom

    # (0, 32) in one process.
    print(keras_memgeom.backend.global_batch_position(32))
    ```
    """
    # Keras does not distribute the torch backend: one process, one batch.
    return 0, local_batch_size


def memory_quadratic(value, anchor, fisher):
    """`sum(fisher * (value - anchor)^2)`, differentiated without autodiff.

    The gradient with respect to `value`, `2 * fisher * (value - anchor)`,
    is given directly rather than taken by autodiff. On the compiled
    backends it is recomputed in the backward pass and fused into the
    optimizer's update; eager torch fuses nothing, so here the forward
    pass keeps the product `fisher * (value - anchor)` for the backward
    one: four passes over the memory per step. `anchor` and `fisher` get
    no gradient.

    Args:
        value: a tensor.
        anchor: a tensor of the same shape and dtype.
        fisher: a tensor of the same shape and dtype, non-negative.

    Returns:
        A scalar tensor.

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
    return _MemoryQuadratic.apply(value, anchor, fisher)


class _MemoryQuadratic(torch.autograd.Function):
    """Eager torch runs one kernel per op, so the fewest passes win.

    The forward pass keeps `fisher * (value - anchor)`, which is the
    gradient but for a scalar: four passes over the memory in all (the
    recomputing form takes six).
    """

    @staticmethod
    def forward(ctx, value, anchor, fisher):
        diff = torch.sub(value, anchor)
        metric_diff = torch.mul(diff, fisher)
        ctx.save_for_backward(metric_diff)
        return torch.dot(diff.reshape(-1), metric_diff.reshape(-1))

    @staticmethod
    def backward(ctx, upstream):
        (metric_diff,) = ctx.saved_tensors
        return torch.mul(metric_diff, 2.0 * upstream), None, None


def kronecker_quadratic(diff, a, g):
    """Torch: an `autograd.Function` keeping `a @ diff @ g` for backward."""
    return _KroneckerQuadratic.apply(diff, a, g)


class _KroneckerQuadratic(torch.autograd.Function):
    """Eager torch pays per kernel: a factor triple costs four of them.

    `x @ A` for `A = V diag(s) V^T + r (I - V V^T)` is `r x` plus one
    accumulating matmul of the thin `(x @ V) * (s - r)`; the forward's
    product is the gradient but for a scalar, so the backward pass costs
    one multiply.
    """

    @staticmethod
    def forward(ctx, diff, a, g):
        product = _factor_product(a, diff, left=True)
        product = _factor_product(g, product, left=False)
        ctx.save_for_backward(product)
        return torch.dot(diff.reshape(-1), product.reshape(-1))

    @staticmethod
    def backward(ctx, upstream):
        (product,) = ctx.saved_tensors
        return torch.mul(product, 2.0 * upstream), None, None


def _factor_product(factor, x, left):
    if not isinstance(factor, tuple):
        return torch.mm(factor, x) if left else torch.mm(x, factor)
    vectors, values, remainder = factor
    excess = torch.sub(values, remainder)
    # `addmm`'s `beta` takes a Python number, which would read the
    # remainder back from the device: scale first, then accumulate.
    product = torch.mul(x, remainder)
    if left:
        thin = torch.mm(vectors.T, x).mul_(excess[:, None])
        return product.addmm_(vectors, thin)
    thin = torch.mm(x, vectors).mul_(excess)
    return product.addmm_(thin, vectors.T)
