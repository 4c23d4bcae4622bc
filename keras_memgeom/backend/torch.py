"""The backend contract (`keras_memgeom.backend`) on torch."""

import contextlib

import keras
import torch
from keras.src.backend.torch import core as keras_torch_core
from keras.src.backend.torch import nn as keras_torch_nn


def compile_function(fn):
    return fn


def linearize(fn, primals):
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
    def mapped(*args):
        with _without_memory_format_hints():
            return torch.func.vmap(fn)(*args)

    return mapped


def differentiable_linearize(fn, primals):
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
    device = torch.device(keras_torch_core.get_device())
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{torch.get_num_threads()} threads"
    return f"torch {torch.__version__} on {device.type}: {name} ({device})"


def device_constant(value, dtype):
    # On the device Keras computes on, copied there once.
    return keras_torch_core.convert_to_tensor(value, dtype=dtype)


def check_distribution():
    from keras.src.distribution import distribution_lib

    if distribution_lib.distribution() is not None:
        raise NotImplementedError(
            "keras.distribution does not distribute the torch backend in "
            f"this Keras ({keras.__version__}): the work would silently run "
            "on one device. Use the jax backend for DataParallel or "
            "ModelParallel, or unset the distribution."
        )


def batch_step(function, variables):
    def step(totals, batch):
        check_distribution()
        batch = keras.tree.map_structure(
            keras_torch_core.convert_to_tensor, batch
        )
        sums, checks = function([v.value for v in variables], *batch)
        if totals is not None:
            sums = keras.tree.map_structure(torch.add, totals, sums)
        return sums, [checks]

    return step


def batch_total(totals):
    return totals


def global_batch_position(local_batch_size):
    # Keras does not distribute the torch backend: one process, one batch.
    return 0, local_batch_size
