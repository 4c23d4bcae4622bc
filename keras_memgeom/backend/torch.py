"""The backend contract (`keras_memgeom.backend`) on torch."""

import contextlib

import keras
import torch
from keras.src.backend.torch import core as keras_torch_core
from keras.src.backend.torch import nn as keras_torch_nn

from keras_memgeom.src.utils.host_memory import host_free_memory


def compile_function(fn):
    """Torch: `fn` itself (eager)."""
    return fn


def linearize(fn, primals):
    """Torch: `torch.func.vjp`, its pullback mapped by `torch.func.vmap`."""
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
    """Torch: `torch.func.vmap(fn)`, without channels-last layout hints."""

    def mapped(*args):
        with _without_memory_format_hints():
            return torch.func.vmap(fn)(*args)

    return mapped


def differentiable_linearize(fn, primals):
    """Torch: `autograd.grad(create_graph=True)`, one per cotangent."""
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
    """Torch: float32 matmul precision "highest", no TF32."""
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
    """Torch: the version and Keras's torch device."""
    device = torch.device(keras_torch_core.get_device())
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{torch.get_num_threads()} threads"
    return f"torch {torch.__version__} on {device.type}: {name} ({device})"


def free_memory():
    """Torch: `torch.cuda.mem_get_info` on a GPU, the host's on a CPU."""
    device = torch.device(keras_torch_core.get_device())
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        return host_free_memory()
    return None


def device_constant(value, dtype):
    """Torch: the tensor, copied once to Keras's device."""
    # On the device Keras computes on, copied there once.
    return keras_torch_core.convert_to_tensor(value, dtype=dtype)


def check_distribution():
    """Torch: raises whenever a `keras.distribution` is set."""
    from keras.src.distribution import distribution_lib

    if distribution_lib.distribution() is not None:
        raise NotImplementedError(
            "keras.distribution does not distribute the torch backend in "
            f"this Keras ({keras.__version__}): the work would silently run "
            "on one device. Use the jax backend for DataParallel or "
            "ModelParallel, or unset the distribution."
        )


def batch_step(function, variables):
    """Torch: `function` run eagerly, its sums detached and added."""

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
    """Torch: the totals as they are (one device)."""
    return totals


def global_batch_position(local_batch_size):
    """Torch: one process holds the whole batch."""
    # Keras does not distribute the torch backend: one process, one batch.
    return 0, local_batch_size


def memory_quadratic(value, anchor, fisher):
    """Torch: an `autograd.Function` keeping the forward's product."""
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
    if not isinstance(factor, tuple) and factor.dim() == 1:
        return torch.mul(x, factor[:, None] if left else factor)
    if not isinstance(factor, tuple):
        # `matmul`: a grouped factor multiplies a stack of blocks.
        return torch.matmul(factor, x) if left else torch.matmul(x, factor)
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
