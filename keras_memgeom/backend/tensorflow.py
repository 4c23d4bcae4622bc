import contextlib

import tensorflow as tf


def compile_function(fn):
    return tf.function(fn, reduce_retracing=True)


def linearize(fn, primals):
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
    def mapped(*args):
        return tf.vectorized_map(lambda a: fn(*a), args)

    return mapped


def differentiable_linearize(fn, primals):
    # Called under the training step's tape, the inner tape's gradients are
    # themselves recorded (nested tapes), so they can be differentiated.
    return linearize(fn, primals)


@contextlib.contextmanager
def full_precision_matmul():
    # GPUs default to TF32 (10-bit mantissa) float32 matmuls and convolutions.
    enabled = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(False)
    try:
        yield
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(enabled)


def device_description():
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return f"tensorflow {tf.__version__} on cpu: " + ", ".join(
            d.name for d in tf.config.list_physical_devices("CPU")
        )
    names = ", ".join(
        f"{tf.config.experimental.get_device_details(d).get('device_name', 'GPU')} ({d.name})"
        for d in gpus
    )
    return f"tensorflow {tf.__version__} on gpu: {names}"


def device_constant(value, dtype):
    # Made eagerly even inside a `tf.function`, which captures it.
    with tf.init_scope():
        return tf.constant(value, dtype=dtype)


def distribute_batch(tree):
    # Under a tf.distribute strategy the batch is computed where the
    # strategy's scope puts it; Keras's distribution API is JAX-only here.
    return tree


def check_distribution():
    """A `tf.distribute` strategy runs where its scope puts the work."""
