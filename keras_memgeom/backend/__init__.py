"""The few things `keras.ops` cannot say, one module per backend.

Every backend module provides the same functions:

- `compile_function(fn)`: trace `fn` once for speed (`jax.jit`,
  `tf.function`, or `fn` itself on torch).
- `linearize(fn, primals)`: evaluate `outputs, aux = fn(primals)` and return
  `(outputs, aux, pullback)`, where `pullback(cotangents)` maps a stack of
  `K` output cotangents (shape `(K,) + outputs.shape`) to the stacked
  vector-Jacobian products with respect to `primals` (a list of tensors;
  each result has a leading axis of size `K`).
- `vectorize(fn)`: map `fn` over the leading axis of all its arguments
  (`jax.vmap`, `tf.vectorized_map`, `torch.func.vmap`).

and, for second-order autodiff inside a training step:

- `differentiable_linearize(fn, primals)`: as `linearize`, but the
  pullback's results stay differentiable by the autodiff that encloses the
  call (a `jax.grad` around a `jax.vjp`, nested `tf.GradientTape`s, torch
  `autograd.grad(create_graph=True)` under `torch.enable_grad()`), so a
  loss built from gradients (e.g. a Fisher trace) can be trained on.

and, for work spread over devices:

- `batch_step(function, variables)`: a step `step(totals, batch)` that
  sums `function(values, *batch) -> (sums, checks)` over batches where the
  work runs. `batch` is a tuple of host arrays (nested structures allowed)
  sharing a leading batch axis; `values` are the current values of
  `variables`. Under the active `keras.distribution` (jax) the batch is
  placed with its data layout, split over the batch axis, so per-example
  work runs on every device and the sums are reduced inside the compiled
  step; under a `tf.distribute` strategy with several replicas
  (tensorflow) the rows are dealt to the replicas and `strategy.run`
  computes each replica's share, every replica keeping its own running
  sums. The step returns the new `totals` (`None` the first time) and the
  device `checks`, one list per device share. Torch refuses a
  distribution (`check_distribution`).
- `batch_total(totals)`: the totals of `batch_step` as one structure of
  tensors, reduced across replicas once (tensorflow); unchanged elsewhere.
- `global_batch_position(local_batch_size)`: `(offset, global_size)`: where
  this process's rows start in the global batch and its size. Several
  jax processes under a `keras.distribution` each hold `local_batch_size`
  rows, laid out in process order; elsewhere `(0, local_batch_size)`.
- `check_distribution()`: raises a `NotImplementedError` where a
  `keras.distribution` is set but Keras cannot distribute the backend
  (torch), rather than silently running on one device.

and, for the memory penalty of every training step:

- `memory_quadratic(value, anchor, fisher)`: `sum(fisher * (value -
  anchor)^2)` with the gradient `2 * fisher * (value - anchor)` given by a
  custom gradient: recomputed in the backward pass, so a compiled step
  (jax, tensorflow) fuses it into the optimizer's update and keeps no
  product between the passes; eager torch keeps the forward product
  instead, which takes fewer passes there.

and, for exact numbers and for saying where a run ran:

- `device_constant(value, dtype)`: a tensor holding the array `value` on
  the device Keras computes on, made outside any trace even when called
  inside one, so it can be kept and reused by every traced step.
- `full_precision_matmul()`: a context manager under which float32 matmuls
  and convolutions run in full float32 (no TF32 or lower-precision passes,
  which GPUs use by default); the previous settings come back on exit.
- `free_memory()`: bytes still free on the device Keras computes on (the
  host's available memory on a CPU), or `None` where the backend does not
  say (a TensorFlow GPU).
- `device_description()`: the backend's version and the devices it
  computes on, one line (e.g. `"jax 0.4.30 on gpu: NVIDIA H100 (cuda:0)"`).

This is the only place in the package that branches on the backend.
"""

import keras

_BACKEND = keras.backend.backend()

if _BACKEND == "jax":
    from keras_memgeom.backend.jax import batch_step
    from keras_memgeom.backend.jax import batch_total
    from keras_memgeom.backend.jax import check_distribution
    from keras_memgeom.backend.jax import compile_function
    from keras_memgeom.backend.jax import device_constant
    from keras_memgeom.backend.jax import device_description
    from keras_memgeom.backend.jax import differentiable_linearize
    from keras_memgeom.backend.jax import free_memory
    from keras_memgeom.backend.jax import full_precision_matmul
    from keras_memgeom.backend.jax import global_batch_position
    from keras_memgeom.backend.jax import kronecker_quadratic
    from keras_memgeom.backend.jax import linearize
    from keras_memgeom.backend.jax import memory_quadratic
    from keras_memgeom.backend.jax import vectorize
elif _BACKEND == "tensorflow":
    from keras_memgeom.backend.tensorflow import batch_step
    from keras_memgeom.backend.tensorflow import batch_total
    from keras_memgeom.backend.tensorflow import check_distribution
    from keras_memgeom.backend.tensorflow import compile_function
    from keras_memgeom.backend.tensorflow import device_constant
    from keras_memgeom.backend.tensorflow import device_description
    from keras_memgeom.backend.tensorflow import differentiable_linearize
    from keras_memgeom.backend.tensorflow import free_memory
    from keras_memgeom.backend.tensorflow import full_precision_matmul
    from keras_memgeom.backend.tensorflow import global_batch_position
    from keras_memgeom.backend.tensorflow import kronecker_quadratic
    from keras_memgeom.backend.tensorflow import linearize
    from keras_memgeom.backend.tensorflow import memory_quadratic
    from keras_memgeom.backend.tensorflow import vectorize
elif _BACKEND == "torch":
    from keras_memgeom.backend.torch import batch_step
    from keras_memgeom.backend.torch import batch_total
    from keras_memgeom.backend.torch import check_distribution
    from keras_memgeom.backend.torch import compile_function
    from keras_memgeom.backend.torch import device_constant
    from keras_memgeom.backend.torch import device_description
    from keras_memgeom.backend.torch import differentiable_linearize
    from keras_memgeom.backend.torch import free_memory
    from keras_memgeom.backend.torch import full_precision_matmul
    from keras_memgeom.backend.torch import global_batch_position
    from keras_memgeom.backend.torch import kronecker_quadratic
    from keras_memgeom.backend.torch import linearize
    from keras_memgeom.backend.torch import memory_quadratic
    from keras_memgeom.backend.torch import vectorize
else:
    raise ImportError(
        f"keras_memgeom supports the jax, tensorflow and torch backends; "
        f"KERAS_BACKEND is {_BACKEND!r}."
    )

__all__ = [
    "batch_step",
    "batch_total",
    "check_distribution",
    "compile_function",
    "device_constant",
    "device_description",
    "differentiable_linearize",
    "free_memory",
    "full_precision_matmul",
    "global_batch_position",
    "kronecker_quadratic",
    "linearize",
    "memory_quadratic",
    "vectorize",
]
