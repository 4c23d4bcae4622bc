import contextlib

import torch
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
                    outputs, primals, grad_outputs=c, create_graph=True, allow_unused=True
                )
                for c in cotangents
            ]
        return [
            torch.stack([g[i] if g[i] is not None else torch.zeros_like(p) for g in grads])
            for i, p in enumerate(primals)
        ]

    return outputs, aux, pullback
