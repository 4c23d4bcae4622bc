"""The backend contract (`keras_memgeom.backend`) on jax."""

import jax
import jax.numpy as jnp

from keras_memgeom.backend.common import kronecker_product
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
    return jax.jit(fn)


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
    outputs, vjp_fn, aux = jax.vjp(fn, primals, has_aux=True)

    def pullback(cotangents):
        return jax.vmap(vjp_fn)(cotangents)[0]

    return outputs, aux, pullback


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
    return jax.vmap(fn)


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
    # jax.vjp composes with an enclosing jax.grad: the pullback is traced
    # like any other function of the parameters.
    return linearize(fn, primals)


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
    # GPUs default to TF32 (10-bit mantissa) float32 matmuls.
    return jax.default_matmul_precision("highest")


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
    devices = jax.devices()
    names = ", ".join(
        str(d) if d.device_kind == d.platform else f"{d.device_kind} ({d})"
        for d in devices
    )
    return f"jax {jax.__version__} on {devices[0].platform}: {names}"


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
    # This process's device: on several processes the first global one may
    # belong to another.
    stats = jax.local_devices()[0].memory_stats()
    if stats and "bytes_limit" in stats:
        return stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    return host_free_memory()


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
    # Concrete even when called while a `jax.jit` traces: a tracer kept
    # across traces would leak.
    with jax.ensure_compile_time_eval():
        return jnp.asarray(value, dtype=dtype)


def _distribute_batch(tree):
    from keras.src.backend.jax.distribution_lib import distribute_data_input
    from keras.src.distribution import distribution_lib

    tree = jax.tree_util.tree_map(jnp.asarray, tree)
    distribution = distribution_lib.distribution()
    if distribution is None:
        return tree
    mesh = distribution.device_mesh
    shards = dict(zip(mesh.axis_names, mesh.shape)).get(
        distribution.batch_dim_name, 1
    )
    processes = jax.process_count()
    # Each process places its own rows on its share of the batch axis.
    local_shards = max(shards // processes, 1)

    def place(x):
        if x.ndim and x.shape[0] % local_shards and processes > 1:
            raise ValueError(
                f"A batch of {x.shape[0]} rows per process does not split "
                f"over the {local_shards} devices of this process's share "
                "of the batch axis: give every process batches (the last "
                f"one too) of a multiple of {local_shards} rows."
            )
        if x.ndim == 0 or x.shape[0] % local_shards:
            return x  # a last batch that does not split evenly stays replicated
        return distribute_data_input(
            x,
            distribution.get_data_layout(x.shape),
            distribution.batch_dim_name,
        )

    return jax.tree_util.tree_map(place, tree)


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
    compiled = jax.jit(function)

    def step(totals, batch):
        # Placed with the distribution's data layout, the batch is split
        # over the devices; the sums are reduced inside the compiled step.
        sums, checks = compiled(
            [v.value for v in variables], *_distribute_batch(batch)
        )
        if totals is not None:
            sums = jax.tree_util.tree_map(jnp.add, totals, sums)
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
    from keras.src.distribution import distribution_lib

    if distribution_lib.distribution() is None:
        return 0, local_batch_size
    # Keras lays the processes' batches out in process order.
    index, count = jax.process_index(), jax.process_count()
    return index * local_batch_size, count * local_batch_size


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


@jax.custom_vjp
def memory_quadratic(value, anchor, fisher):
    """`sum(fisher * (value - anchor)^2)`, differentiated without autodiff.

    The gradient with respect to `value`, `2 * fisher * (value - anchor)`,
    is recomputed from the three inputs in the backward pass instead of
    being kept from the forward one, so a compiled step fuses it into the
    optimizer's update and no product of the size of `value` is stored
    between the passes. `anchor` and `fisher` get no gradient.

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
    # `anchor - value`, not the backward pass's `value - anchor`: XLA would
    # share one materialized difference between the two, where each pass
    # fuses its own at no cost.
    diff = anchor - value
    return jnp.sum(fisher * diff * diff)


def _memory_quadratic_forward(value, anchor, fisher):
    # The inputs are the residuals: they live on as variables anyway.
    return memory_quadratic(value, anchor, fisher), (value, anchor, fisher)


def _memory_quadratic_backward(residuals, upstream):
    value, anchor, fisher = residuals
    return (2.0 * upstream) * fisher * (value - anchor), None, None


memory_quadratic.defvjp(_memory_quadratic_forward, _memory_quadratic_backward)


@jax.custom_vjp
def kronecker_quadratic(diff, a, g):
    """Jax: a `custom_vjp` whose residual is the forward's `a @ diff @ g`."""
    return jnp.vdot(diff, kronecker_product(diff, a, g))


def _kronecker_quadratic_forward(diff, a, g):
    product = kronecker_product(diff, a, g)
    return jnp.vdot(diff, product), product


def _kronecker_quadratic_backward(product, upstream):
    return (2.0 * upstream) * product, None, None


kronecker_quadratic.defvjp(
    _kronecker_quadratic_forward, _kronecker_quadratic_backward
)
