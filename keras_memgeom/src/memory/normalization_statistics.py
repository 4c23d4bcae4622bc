"""What training with a memory does to normalization's moving statistics.

A memory remembers trainable variables only. A `BatchNormalization` layer
also carries non-trainable state, its moving mean and variance, which Keras
updates from every training batch and uses at inference: training on a new
task replaces the old task's statistics even when the memory keeps every
weight in place. The policy chosen here says what happens to that state
while a model trains with memories:

- `"freeze"` (the default): normalization layers normalize with their
  moving statistics (as at inference) and never update them, while their
  scale `gamma` and offset `beta` stay trainable and protected by the
  memory. The statistics of the remembered task are kept exactly.
- `"update"`: Keras's behaviour; batch statistics in training, moving
  statistics updated. What the memory protects is then evaluated with the
  new task's statistics.

The freeze is a wrapper of each layer's `call` that passes `training=False`
(the layer's `trainable` flag is left alone, since it would also freeze
`gamma` and `beta`); `statistics_frozen(layer)` tells whether a layer has it.
"""

import functools
import inspect

import keras

POLICIES = ("freeze", "update")
DEFAULT_POLICY = "freeze"

# The policy applied to a model, kept outside Keras's attribute tracking.
_POLICY = "_keras_memgeom_normalization_statistics"
# On a frozen layer's `call` wrapper: the layer's own `call`.
_ORIGINAL_CALL = "_keras_memgeom_original_call"


def check_policy(value):
    """Returns `value` after checking it is one of `POLICIES`.

    Args:
        value: what the caller passed as `normalization_statistics`.

    Returns:
        The policy, a string.

    Raises:
        ValueError: naming `normalization_statistics` and the choices.
    """
    if not isinstance(value, str) or value not in POLICIES:
        raise ValueError(
            "`normalization_statistics` must be one of "
            f"{', '.join(repr(p) for p in POLICIES)}; got {value!r}."
        )
    return value


def normalization_layers(model):
    """The layers of `model` (nested ones too) that keep moving statistics."""
    return [
        layer
        for layer in model._flatten_layers(include_self=True)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]


def statistics_frozen(layer):
    """Whether `layer`'s moving statistics are frozen by a memory's policy."""
    return hasattr(layer.__dict__.get("call"), _ORIGINAL_CALL)


def apply_policy(model, policy):
    """Freezes or releases the moving statistics of `model`'s normalization.

    Args:
        model: a Keras model training with memories.
        policy: `"freeze"` or `"update"` (see the module's docstring).

    Returns:
        The policy.

    Raises:
        ValueError: if `policy` is not one of `POLICIES`.
    """
    policy = check_policy(policy)
    for layer in normalization_layers(model):
        if policy == "freeze":
            _freeze(layer)
        else:
            _release(layer)
    object.__setattr__(model, _POLICY, policy)
    return policy


def release(model):
    """Gives `model`'s normalization layers their own `call` back."""
    for layer in normalization_layers(model):
        _release(layer)
    if _POLICY in model.__dict__:
        object.__delattr__(model, _POLICY)


def policy_of(model):
    """The policy applied to `model`, or `None` when none is."""
    return model.__dict__.get(_POLICY)


def _freeze(layer):
    if statistics_frozen(layer):
        return
    original = layer.call
    signature = inspect.signature(original)

    @functools.wraps(original)
    def call(*args, **kwargs):
        # Inference-mode normalization: moving statistics are read, never
        # assigned; gamma and beta still get their gradients.
        arguments = signature.bind(*args, **kwargs)
        arguments.arguments["training"] = False
        return original(*arguments.args, **arguments.kwargs)

    setattr(call, _ORIGINAL_CALL, original)
    # Not a tracked attribute: not a weight, not in the layer's config.
    object.__setattr__(layer, "call", call)


def _release(layer):
    if statistics_frozen(layer):
        object.__delattr__(layer, "call")
