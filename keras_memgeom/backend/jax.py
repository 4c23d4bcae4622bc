"""The backend contract (`keras_memgeom.backend`) on jax."""

import jax
import jax.numpy as jnp

from keras_memgeom.backend.common import kronecker_product
from keras_memgeom.src.utils.host_memory import host_free_memory


def compile_function(fn):
    """Jax: `jax.jit(fn)`."""
    return jax.jit(fn)


def linearize(fn, primals):
    """Jax: `jax.vjp`, its pullback mapped over the cotangents by `jax.vmap`."""
    outputs, vjp_fn, aux = jax.vjp(fn, primals, has_aux=True)

    def pullback(cotangents):
        return jax.vmap(vjp_fn)(cotangents)[0]

    return outputs, aux, pullback


def vectorize(fn):
    """Jax: `jax.vmap(fn)`."""
    return jax.vmap(fn)


def differentiable_linearize(fn, primals):
    """Jax: `linearize`, which an enclosing `jax.grad` differentiates."""
    # jax.vjp composes with an enclosing jax.grad: the pullback is traced
    # like any other function of the parameters.
    return linearize(fn, primals)


def full_precision_matmul():
    """Jax: `jax.default_matmul_precision("highest")`."""
    # GPUs default to TF32 (10-bit mantissa) float32 matmuls.
    return jax.default_matmul_precision("highest")


def device_description():
    """Jax: the version and `jax.devices()`."""
    devices = jax.devices()
    names = ", ".join(
        str(d) if d.device_kind == d.platform else f"{d.device_kind} ({d})"
        for d in devices
    )
    return f"jax {jax.__version__} on {devices[0].platform}: {names}"


def free_memory():
    """Jax: the first local device's `memory_stats()`, else the host's."""
    # This process's device: on several processes the first global one may
    # belong to another.
    stats = jax.local_devices()[0].memory_stats()
    if stats and "bytes_limit" in stats:
        return stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    return host_free_memory()


def device_constant(value, dtype):
    """Jax: `jnp.asarray` under `jax.ensure_compile_time_eval()`."""
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
    """Jax: a jitted `function` on the batch placed with the data layout."""
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
    """Jax: the totals as they are (reduced inside the step)."""
    return totals


def global_batch_position(local_batch_size):
    """Jax: from `jax.process_index()` and `jax.process_count()`."""
    from keras.src.distribution import distribution_lib

    if distribution_lib.distribution() is None:
        return 0, local_batch_size
    # Keras lays the processes' batches out in process order.
    index, count = jax.process_index(), jax.process_count()
    return index * local_batch_size, count * local_batch_size


def check_distribution():
    """Jax: runs every `keras.distribution`, so never raises."""


@jax.custom_vjp
def memory_quadratic(value, anchor, fisher):
    """Jax: a `custom_vjp` recomputing the gradient from its inputs."""
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
