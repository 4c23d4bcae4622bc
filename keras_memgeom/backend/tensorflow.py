"""The backend contract (`keras_memgeom.backend`) on tensorflow."""

import contextlib
import weakref

import tensorflow as tf

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
    return tf.function(fn, reduce_retracing=True)


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
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(primals)
        outputs, aux = fn(primals)

    def pullback(cotangents):
        # A loop over the K cotangents (classes or samples), never examples.
        grads = [
            tape.gradient(outputs, primals, output_gradients=cotangents[k])
            for k in range(cotangents.shape[0])
        ]
        return [
            tf.stack(
                [g[i] if g[i] is not None else tf.zeros_like(p) for g in grads]
            )
            for i, p in enumerate(primals)
        ]

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

    def mapped(*args):
        return tf.vectorized_map(lambda a: fn(*a), args)

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
    # Called under the training step's tape, the inner tape's gradients are
    # themselves recorded (nested tapes), so they can be differentiated.
    return linearize(fn, primals)


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
    # GPUs default to TF32 (10-bit mantissa) float32 matmuls and convolutions.
    enabled = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(False)
    try:
        yield
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(enabled)


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
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return f"tensorflow {tf.__version__} on cpu: " + ", ".join(
            d.name for d in tf.config.list_physical_devices("CPU")
        )
    details = tf.config.experimental.get_device_details
    names = ", ".join(
        f"{details(d).get('device_name', 'GPU')} ({d.name})" for d in gpus
    )
    return f"tensorflow {tf.__version__} on gpu: {names}"


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
    if tf.config.list_logical_devices("GPU"):
        return None
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
    # Made eagerly even inside a `tf.function`, which captures it.
    with tf.init_scope():
        return tf.constant(value, dtype=dtype)


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
    compiled = compile_function(function)
    replicated = weakref.WeakKeyDictionary()

    def step(totals, batch):
        strategy = tf.distribute.get_strategy()
        count = strategy.num_replicas_in_sync
        if count == 1:
            batch = tf.nest.map_structure(tf.convert_to_tensor, batch)
            sums, checks = compiled([v.value for v in variables], *batch)
            if totals is not None:
                sums = tf.nest.map_structure(tf.add, totals, sums)
            return sums, [checks]
        if len(strategy.extended.worker_devices) != count:
            raise NotImplementedError(
                f"The {type(strategy).__name__} spans {count} replicas on "
                "several workers, but Fisher estimation deals a batch to "
                "this host's replicas only. Estimate the memory on one host "
                "(e.g. under a MirroredStrategy) and load it on every worker."
            )
        if len(tf.nest.flatten(batch)[0]) < count:
            # Too few rows for every replica to get one: computed once and
            # added to the first replica's sums.
            sums, checks = compiled(
                [v.value for v in variables],
                *tf.nest.map_structure(tf.convert_to_tensor, batch),
            )
            return _add_to_first_replica(strategy, totals, sums), [checks]
        if strategy not in replicated:
            replicated[strategy] = _replicated(strategy, function, variables)
        totals, checks = replicated[strategy](
            totals, _split_per_replica(strategy, batch)
        )
        local = [strategy.experimental_local_results(c) for c in checks]
        return totals, [list(values) for values in zip(*local)]

    return step


def _replicated(strategy, function, variables):
    """`strategy.run` of `function` on every replica's share of a batch."""

    def on_replica(totals, batch):
        # Each replica reads its own copy of the mirrored variables and
        # keeps its own running sums: nothing crosses replicas per batch.
        sums, checks = function([v.value for v in variables], *batch)
        if totals is not None:
            sums = tf.nest.map_structure(tf.add, totals, sums)
        return sums, checks

    @tf.function(reduce_retracing=True)
    def run(totals, batch):
        return strategy.run(on_replica, args=(totals, batch))

    return run


def _add_to_first_replica(strategy, totals, sums):
    devices = strategy.extended.worker_devices

    def share(context):
        i = context.replica_id_in_sync_group
        with tf.device(devices[i]):
            return tf.nest.map_structure(
                tf.identity if i == 0 else tf.zeros_like, sums
            )

    shares = strategy.experimental_distribute_values_from_function(share)
    if totals is None:
        return shares
    return strategy.run(
        lambda t, s: tf.nest.map_structure(tf.add, t, s), args=(totals, shares)
    )


def _split_per_replica(strategy, batch):
    """The rows of a host batch dealt to the replicas, in replica order."""
    count = strategy.num_replicas_in_sync
    rows = len(tf.nest.flatten(batch)[0])
    bounds = [rows * i // count for i in range(count + 1)]

    devices = strategy.extended.worker_devices

    def share(context):
        i = context.replica_id_in_sync_group
        # Copied from the host straight to the replica's device.
        with tf.device(devices[i]):
            return tf.nest.map_structure(
                lambda a: tf.convert_to_tensor(a[bounds[i] : bounds[i + 1]]),
                batch,
            )

    return strategy.experimental_distribute_values_from_function(share)


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

    def reduce(total):
        if not isinstance(total, tf.distribute.DistributedValues):
            return total
        # The one reduction across replicas, after the last batch.
        return tf.distribute.get_strategy().reduce(
            tf.distribute.ReduceOp.SUM, total, axis=None
        )

    return tf.nest.map_structure(reduce, totals)


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
    # A tf.distribute strategy splits the batch it is given: one global
    # batch per process.
    return 0, local_batch_size


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
    # Read variables first: `tf.custom_gradient` takes tensors.
    return _memory_quadratic(
        tf.convert_to_tensor(value),
        tf.convert_to_tensor(anchor),
        tf.convert_to_tensor(fisher),
    )


@tf.custom_gradient
def _memory_quadratic(value, anchor, fisher):
    diff = value - anchor

    def gradient(upstream):
        # Recomputed, not captured: XLA fuses it into the update.
        return (2.0 * upstream) * fisher * (value - anchor), None, None

    return tf.reduce_sum(fisher * diff * diff), gradient


def kronecker_quadratic(diff, a, g):
    """TensorFlow: a `custom_gradient` returning the forward's product."""
    # `tf.custom_gradient` takes flat tensors: the factors' parts, read.
    factors = (a, g)
    parts = [tf.convert_to_tensor(p) for p in tf.nest.flatten(factors)]

    @tf.custom_gradient
    def quadratic(diff, *parts):
        a, g = tf.nest.pack_sequence_as(factors, list(parts))
        product = kronecker_product(diff, a, g)

        def gradient(upstream):
            return [(2.0 * upstream) * product] + [None] * len(parts)

        return tf.reduce_sum(diff * product), gradient

    return quadratic(tf.convert_to_tensor(diff), *parts)
