"""The backend contract (`keras_memgeom.backend`) on jax."""

import jax
import jax.numpy as jnp


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


def full_precision_matmul():
    # GPUs default to TF32 (10-bit mantissa) float32 matmuls.
    return jax.default_matmul_precision("highest")


def device_description():
    devices = jax.devices()
    names = ", ".join(
        str(d) if d.device_kind == d.platform else f"{d.device_kind} ({d})"
        for d in devices
    )
    return f"jax {jax.__version__} on {devices[0].platform}: {names}"


def device_constant(value, dtype):
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
    return totals


def global_batch_position(local_batch_size):
    from keras.src.distribution import distribution_lib

    if distribution_lib.distribution() is None:
        return 0, local_batch_size
    # Keras lays the processes' batches out in process order.
    index, count = jax.process_index(), jax.process_count()
    return index * local_batch_size, count * local_batch_size


def check_distribution():
    """Every `keras.distribution` runs on JAX."""
