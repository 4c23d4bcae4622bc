import jax


def compile_function(fn):
    return jax.jit(fn)


def linearize(fn, primals):
    outputs, vjp_fn, aux = jax.vjp(fn, primals, has_aux=True)

    def pullback(cotangents):
        return jax.vmap(vjp_fn)(cotangents)[0]

    return outputs, aux, pullback


def vectorize(fn):
    return jax.vmap(fn)


def differentiable_linearize(fn, primals):
    # jax.vjp composes with an enclosing jax.grad: the pullback is traced
    # like any other function of the parameters.
    return linearize(fn, primals)
