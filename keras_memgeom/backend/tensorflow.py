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
