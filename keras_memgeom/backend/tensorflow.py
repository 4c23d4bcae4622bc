"""The backend contract (`keras_memgeom.backend`) on tensorflow."""

import contextlib
import weakref

import tensorflow as tf

from keras_memgeom.backend.common import kronecker_product
from keras_memgeom.src.utils.host_memory import host_free_memory


def compile_function(fn):
    """TensorFlow: `tf.function(fn, reduce_retracing=True)`."""
    return tf.function(fn, reduce_retracing=True)


def linearize(fn, primals):
    """TensorFlow: a persistent `tf.GradientTape`, one pass per cotangent."""
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
    """TensorFlow: `tf.map_fn(fn)`, iterations run in parallel in a graph."""
    # Not `tf.vectorized_map`: its conversion of per-example backward passes
    # raises on recurrent layers' while loops and corrupts memory on some
    # keras-hub models (TensorFlow 2.21). The first example is computed
    # apart to read the output signature `map_fn` needs.

    def mapped(*args):
        first = fn(*tf.nest.map_structure(lambda a: a[0], args))
        signature = tf.nest.map_structure(
            lambda t: tf.TensorSpec(t.shape, t.dtype), first
        )
        rest = tf.map_fn(
            lambda a: fn(*a),
            tf.nest.map_structure(lambda a: a[1:], args),
            fn_output_signature=signature,
        )
        return tf.nest.map_structure(
            lambda f, r: tf.concat([f[None], r], axis=0), first, rest
        )

    return mapped


def differentiable_linearize(fn, primals):
    """TensorFlow: nested `tf.GradientTape`s that the outer tape records."""
    # Called under the training step's tape, the inner tape's gradients are
    # themselves recorded (nested tapes), so they can be differentiated.
    return linearize(fn, primals)


@contextlib.contextmanager
def full_precision_matmul():
    """TensorFlow: TF32 execution switched off, then restored."""
    # GPUs default to TF32 (10-bit mantissa) float32 matmuls and convolutions.
    enabled = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(False)
    try:
        yield
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(enabled)


def device_description():
    """TensorFlow: the version and the physical devices."""
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
    """TensorFlow: `None` on a GPU, the host's memory on a CPU."""
    if tf.config.list_logical_devices("GPU"):
        return None
    return host_free_memory()


def device_constant(value, dtype):
    """TensorFlow: `tf.constant` made under `tf.init_scope()`."""
    # Made eagerly even inside a `tf.function`, which captures it.
    with tf.init_scope():
        return tf.constant(value, dtype=dtype)


def batch_step(function, variables):
    """TensorFlow: a `tf.function`, run per replica by `strategy.run`."""
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
    """TensorFlow: the replicas' totals summed once."""

    def reduce(total):
        if not isinstance(total, tf.distribute.DistributedValues):
            return total
        # The one reduction across replicas, after the last batch.
        return tf.distribute.get_strategy().reduce(
            tf.distribute.ReduceOp.SUM, total, axis=None
        )

    return tf.nest.map_structure(reduce, totals)


def global_batch_position(local_batch_size):
    """TensorFlow: one process holds the whole batch."""
    # A tf.distribute strategy splits the batch it is given: one global
    # batch per process.
    return 0, local_batch_size


def check_distribution():
    """TensorFlow: strategies run where their scope puts the work."""


def memory_quadratic(value, anchor, fisher):
    """TensorFlow: a `custom_gradient` recomputing the gradient."""
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
