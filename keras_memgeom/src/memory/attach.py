"""Attaches memories to any Keras model as weight regularizers, or not."""

import warnings
from functools import partial

import keras
import numpy as np

from keras_memgeom.src.memory import normalization_statistics as statistics
from keras_memgeom.src.memory.fisher_memory import FisherMemory
from keras_memgeom.src.memory.fisher_regularizer import FisherRegularizer
from keras_memgeom.src.memory.kronecker import kernel_matrix
from keras_memgeom.src.memory.kronecker_regularizer import (
    KroneckerBiasRegularizer,
)
from keras_memgeom.src.memory.kronecker_regularizer import KroneckerRegularizer
from keras_memgeom.src.memory.lora_regularizer import LoraRegularizer
from keras_memgeom.src.memory.lora_regularizer import lora_factors
from keras_memgeom.src.memory.lora_regularizer import lora_layers
from keras_memgeom.src.memory.merge import common_blocks
from keras_memgeom.src.memory.merge import merge
from keras_memgeom.src.memory.penalty import penalty_scale
from keras_memgeom.src.utils.checks import check_number
from keras_memgeom.src.utils.model_save import save_model

# The attachment of a model, kept outside Keras's attribute tracking so it is
# neither a layer nor saved weights.
_ATTACHMENT = "_keras_memgeom_attachment"


class Attachment:
    """The memories attached to one model, and the penalty state on the device.

    The merged memory's anchor and Fisher are non-trainable `keras.Variable`s
    (one pair per remembered variable) and the penalty's scale is one shared
    scalar variable, so a traced training step reads them as state: changing
    the number of training examples assigns the scale and never retraces.

    Args:
        memories: the list of `FisherMemory` attached (oldest first).
        strength: the memories' strength.
        regularizers: `(variable, FisherRegularizer)` pairs.
        scale: the shared scale variable.
        num_examples: `n` of the merged memory.
    """

    def __init__(self, memories, strength, regularizers, scale, num_examples):
        self.memories = memories
        self.strength = strength
        self.regularizers = regularizers
        self.scale = scale
        self.num_examples = num_examples

    @property
    def variables(self):
        """The state the penalty reads: anchors, Fishers or factors, scale."""
        out = [self.scale]
        for _, regularizer in self.regularizers:
            out.extend(regularizer.variables)
        return out

    def set_num_train_examples(self, num_train_examples):
        """Rescales the penalty for a mean loss over `num_train_examples`."""
        self.scale.assign(
            penalty_scale(self.num_examples, num_train_examples, self.strength)
        )


def attach(
    model,
    memory,
    *,
    num_train_examples,
    strength=1.0,
    normalization_statistics=statistics.DEFAULT_POLICY,
):
    """Adds a memory's penalty to `model`'s loss, as Keras regularizers.

    Each remembered variable gets a `FisherRegularizer` (kept beside any
    regularizer it already had), so training minimizes
    `loss + strength/2 * n/num_train_examples * sum F (theta - anchor)^2` on
    every path: `fit`, `train_on_batch` and custom loops that call
    `compute_loss`; `evaluate` includes it in the loss. A list of memories
    adds one such term per memory (EWC); their sum is one quadratic, so it is
    attached as the merged memory plus the constant that keeps its value
    exact. Keras caches traced train functions, so they are reset here: the
    penalty takes effect at the next step even if the model was compiled and
    trained before.

    On a `keras_memgeom.Model` or `keras_memgeom.Sequential` this is the same
    as compiling with `memories=`: the model holds the memory as state
    apart from its own variables (so a traced step reads it as device
    state), saves it as assets and keeps it across `fit` calls. On any other
    Keras model the layers' `*_regularizer` attributes are set (a
    Kronecker-factored block's penalty split between the kernel and the
    bias), so the layers' configs rebuild the regularizers and `model.save`
    keeps their arrays in the weights file; the model's `.keras` saves are
    made atomic. On JAX the arrays are then constants of the traced step,
    which is fine for small models (use the package's models for large
    ones).

    A memory of a pretrained model used while LoRA fine-tunes it (estimated
    before `layer.enable_lora(rank)`) remembers weights that LoRA froze:
    each gets a `LoraRegularizer` on its factor `A`, which reads the memory
    at the layer's effective weight `W + lora_alpha / lora_rank * A @ B`,
    so the penalty trains the factors. This needs the package's models.

    A memory remembers trainable variables only, so by default the moving
    statistics of `BatchNormalization` layers are frozen while it is
    attached (see `normalization_statistics`); `detach` releases them. On a
    plain Keras model this is not saved: attach again after loading, or use
    the package's models, whose compile config keeps it.

    Args:
        model: a built Keras model.
        memory: a `FisherMemory` or a list of them (oldest first).
        num_train_examples: the number of examples the training loss
            averages over.
        strength: `1` is the Bayesian (Laplace) scaling; EWC's lambda.
        normalization_statistics: `"freeze"` (the default): normalization
            layers use their moving statistics (as at inference) and do not
            update them, while `gamma` and `beta` stay trainable under the
            memory; `"update"`: Keras's behaviour, which can lose the
            remembered task's statistics although its weights are kept.

    Returns:
        The model.

    Raises:
        ValueError: if a memory does not fit the model (the variable is
            named), a plain model would not keep the penalty of some
            variables through `model.save` and `keras.saving.load_model`
            (they are named; nothing is attached), remembers a weight that
            `enable_lora` froze in a plain model, is not a `FisherMemory`,
            or the arguments are invalid
            (a non-finite or negative strength, a non-integer number of
            examples, a `normalization_statistics` other than `"freeze"` or
            `"update"`).

    Example:

    ```python
    import keras
    import numpy as np

    import keras_memgeom

    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    y = np.arange(64) % 3
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    model.compile(
        "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(x, y, epochs=2, verbose=0)
    memory = keras_memgeom.FisherMemory.estimate(model, (x, y))

    x_b = x[:, ::-1]  # a second task
    keras_memgeom.attach(
        model, memory, num_train_examples=len(x_b), strength=100
    )
    model.fit(x_b, y, epochs=2, verbose=0)
    ```
    """
    memories = memory_list(memory, "memory")
    strength = check_number("strength", strength, minimum=0.0)
    statistics.check_policy(normalization_statistics)
    if not memories:
        detach(model)
        return model
    blocks = common_blocks(memories)
    num_examples = sum(m.num_examples for m in memories)
    scale_value = penalty_scale(num_examples, num_train_examples, strength)
    variables = dict(memories[-1].match(model))
    for m in memories[:-1]:
        m.match(model)
    owners = None if _tracks_memories(model) else _regularizer_attributes(model)
    frozen = lora_layers(model)
    if owners is not None:
        _refuse_lora_weights(variables, frozen)
    _remove_regularizers(model)
    scale = keras.Variable(
        scale_value, trainable=False, dtype="float32", name="memory_scale"
    )
    regularizers = []

    def base_of(variable):
        # Keras regularizes trainable weights only: a frozen weight's own
        # regularizer does not apply (its factor's does, as `base` below).
        return None if id(variable) in frozen else variable.regularizer

    def add(variable, regularizer):
        layer = frozen.get(id(variable))
        if layer is not None:
            # LoRA froze the weight: its penalty, at `W + s A B`, goes on A.
            variable = lora_factors(layer)[1]
            regularizer = LoraRegularizer(
                layer, regularizer, base=variable.regularizer
            )
        _set_regularizer(variable, regularizer, owners)
        regularizers.append((variable, regularizer))

    if owners is not None:
        for kernel, block in blocks.items():
            if block.bias is not None:
                _check_kernel_first(
                    model, variables[kernel], variables[block.bias]
                )
    diagonal = _diagonal_parts(memories, blocks)
    if diagonal[0].paths:
        combined = merge(diagonal)
        offsets = _ewc_offsets(diagonal, combined) if len(diagonal) > 1 else {}
        anchors, fishers = combined.anchor, combined.fisher
        for path in combined.paths:
            regularizer = FisherRegularizer(
                anchors[path],
                fishers[path],
                scale=scale,
                offset=offsets.get(path, 0.0),
                base=base_of(variables[path]),
                like=variables[path],
            )
            add(variables[path], regularizer)
    for kernel, block in blocks.items():
        terms = []
        for m in memories:
            anchor = m.anchor
            matrix = kernel_matrix(anchor[kernel], block)
            bias = (
                anchor[block.bias].reshape(-1)
                if block.bias is not None
                else None
            )
            own = m.kronecker[kernel]
            terms.append(
                (matrix, bias, own.a, own.g, m.num_examples / num_examples)
            )
        bias = variables[block.bias] if block.bias is not None else None
        # A plain model rebuilds its regularizers from layer configs, which
        # cannot refer to another variable: the bias gets the second half.
        paired = owners is not None and bias is not None
        regularizer = KroneckerRegularizer(
            terms,
            None if paired else bias,
            scale,
            mask=block.mask,
            base=base_of(variables[kernel]),
            like=variables[kernel],
            paired=paired,
            axes=block.axes,
        )
        add(variables[kernel], regularizer)
        if paired:
            add(
                bias,
                KroneckerBiasRegularizer(regularizer, base=bias.regularizer),
            )
    if owners is not None:
        lost = _unsaved_paths(model, regularizers)
        if lost:
            _remove_placed(regularizers, owners)
            raise ValueError(
                "`attach` cannot keep the memory of these variables through "
                "`model.save` and `keras.saving.load_model`: "
                f"{', '.join(lost)}. Their layers do not rebuild these "
                "regularizers from their configs. Build the model as a "
                "`keras_memgeom.Model(inputs, outputs)` (which saves memories "
                "with the model) or remember only the other variables."
            )
    attachment = Attachment(
        memories, strength, regularizers, scale, num_examples
    )
    object.__setattr__(model, _ATTACHMENT, attachment)
    if owners is not None:
        # Keras writes straight into the destination; this model's saves
        # (`ModelCheckpoint` included) keep the old file until the new one
        # is whole. The package's models do the same in their class.
        object.__setattr__(model, "save", partial(save_model, model))
    statistics.apply_policy(model, normalization_statistics)
    if _tracks_memories(model):
        model._on_memories_attached(attachment, num_train_examples)
    _reset_traced_functions(model)
    return model


def _diagonal_parts(memories, blocks):
    """Each memory restricted to the variables no Kronecker block covers."""
    if not blocks:
        return memories
    covered = set(blocks) | {
        b.bias for b in blocks.values() if b.bias is not None
    }
    parts = []
    for m in memories:
        anchor, fisher = m.anchor, m.fisher
        paths = [p for p in m.paths if p not in covered]
        parts.append(
            FisherMemory(
                {p: anchor[p] for p in paths},
                {p: fisher[p] for p in paths},
                m.num_examples,
            )
        )
    return parts


def detach(model):
    """Removes every memory penalty from `model`, keeping other regularizers.

    On a `keras_memgeom.Model` or `Sequential` the compiled memories are
    forgotten too, so a later `fit` does not attach them again.

    Args:
        model: a Keras model.

    Returns:
        The model.

    Example:

    ```python
    import keras
    import numpy as np

    import keras_memgeom

    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    y = np.arange(64) % 3
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    model.compile(
        "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(x, y, epochs=1, verbose=0)
    memory = keras_memgeom.FisherMemory.estimate(model, (x, y))
    keras_memgeom.attach(model, memory, num_train_examples=len(x))
    keras_memgeom.detach(model)
    print(model.layers[0].kernel_regularizer)  # None
    ```
    """
    _remove_regularizers(model)
    statistics.release(model)
    if _tracks_memories(model):
        model._on_memories_detached()
    _reset_traced_functions(model)
    return model


def attachment_of(model):
    """The model's `Attachment`, or `None` when no memory is attached."""
    return getattr(model, _ATTACHMENT, None)


def attached_regularizers(model):
    """The `(variable, FisherRegularizer)` pairs currently on `model`.

    These include regularizers restored from a saved plain Keras model,
    which has no `Attachment`.
    """
    return [
        (v, v.regularizer)
        for v in model.trainable_variables
        if isinstance(v.regularizer, MEMORY_REGULARIZERS)
    ]


def memory_list(memories, name):
    """`memories` as a list of `FisherMemory`; a `ValueError` names `name`."""
    if isinstance(memories, FisherMemory):
        memories = [memories]
    if not isinstance(memories, (list, tuple)):
        raise ValueError(
            f"`{name}` takes a FisherMemory or a list of them; got "
            f"{type(memories).__name__}."
        )
    for m in memories:
        if not isinstance(m, FisherMemory):
            raise ValueError(
                f"`{name}` takes FisherMemory objects; got {type(m).__name__}. "
                "Attach per-variable Keras regularizers to the layers instead."
            )
    return list(memories)


def _ewc_offsets(memories, combined):
    """Per path, the constant (per unit scale) that completes the merge.

    Added to the merged quadratic, it makes it equal to the sum of the
    memories' quadratics.
    """
    offsets = {}
    merged_anchor, merged_fisher = combined.anchor, combined.fisher
    views = [(m.num_examples, m.anchor, m.fisher) for m in memories]
    for path in combined.paths:
        per_memory = sum(
            n * np.sum(fisher[path] * anchor[path].astype("float64") ** 2)
            for n, anchor, fisher in views
        )
        merged = combined.num_examples * np.sum(
            merged_fisher[path] * merged_anchor[path].astype("float64") ** 2
        )
        offsets[path] = float((per_memory - merged) / combined.num_examples)
    return offsets


MEMORY_REGULARIZERS = (
    FisherRegularizer,
    KroneckerRegularizer,
    KroneckerBiasRegularizer,
    LoraRegularizer,
)


def _tracks_memories(model):
    return hasattr(model, "_on_memories_attached")


def _remove_regularizers(model):
    owners = None if _tracks_memories(model) else _regularizer_attributes(model)
    for variable, regularizer in attached_regularizers(model):
        _set_regularizer(variable, regularizer.base, owners)
    if attachment_of(model) is not None:
        object.__delattr__(model, _ATTACHMENT)
    if isinstance(model.__dict__.get("save"), partial):
        object.__delattr__(model, "save")


def _regularizer_attributes(model):
    """Maps each variable to the layer attribute serializing its regularizer.

    Keras names the attribute after the variable (`kernel_regularizer`), or
    after the variable less `_kernel` (an LSTM cell's `recurrent_kernel` has
    `recurrent_regularizer`, a separable convolution's `depthwise_kernel`
    `depthwise_regularizer`); a depthwise convolution's `kernel` has
    `depthwise_regularizer`. `attach` checks the guess by rebuilding the
    model from its config.
    """
    owners = {}
    for layer in model._flatten_layers(include_self=True):
        for variable in layer._trainable_variables:
            name = variable.name
            candidates = [f"{name}_regularizer"]
            if name.endswith("_kernel"):
                candidates.append(f"{name[: -len('_kernel')]}_regularizer")
            if name == "kernel":
                candidates.append("depthwise_regularizer")
            for attribute in candidates:
                if hasattr(layer, attribute):
                    owners[id(variable)] = (layer, attribute)
                    break
    return owners


def _unsaved_paths(model, regularizers):
    """The paths of remembered variables a reloaded `model` would not keep.

    The model is rebuilt from its config, as `keras.saving.load_model`
    does; every variable of `regularizers` must come back with a
    regularizer of the same kind.
    """
    try:
        config = keras.saving.serialize_keras_object(model)
        config.pop("compile_config", None)  # the architecture is the question
        clone = keras.saving.deserialize_keras_object(config)
        # Paths may differ in the model's own scope; the order does not.
        kept = {
            id(original): type(rebuilt.regularizer)
            for original, rebuilt in zip(
                model.trainable_variables, clone.trainable_variables
            )
        }
    except Exception as error:  # noqa: BLE001 - any failure to rebuild
        warnings.warn(
            f"The model {model.name!r} cannot be rebuilt from its config "
            f"({type(error).__name__}: {error}), so it cannot be saved as a "
            "`.keras` file: its memory penalty holds in this process only.",
            stacklevel=3,
        )
        return []
    return [
        variable.path
        for variable, regularizer in regularizers
        if kept.get(id(variable)) is not type(regularizer)
    ]


def _refuse_lora_weights(variables, frozen):
    """Refuses, on a plain model, a memory of a weight `enable_lora` froze.

    Its penalty goes on the LoRA factor `A` as a `LoraRegularizer`, which
    reads the layer's variables, so no layer config can rebuild it.
    """
    for path, variable in variables.items():
        if id(variable) in frozen:
            raise ValueError(
                f"`attach` cannot keep the memory of {path!r}, which "
                f"`enable_lora` froze in layer {frozen[id(variable)].name!r}, "
                "in a plain Keras model: its penalty, read at the layer's "
                "effective weight, sits on the LoRA factors, and the "
                "layer's config cannot rebuild it for `model.save`. Build "
                "the model as `keras_memgeom.Model(inputs, outputs)` (which "
                "saves memories with the model), or estimate the memory "
                "after `enable_lora` (it then remembers the LoRA factors)."
            )


def _check_kernel_first(model, kernel, bias):
    # Keras calls regularizers in the order of `trainable_weights`; the
    # bias's half reads the kernel value its kernel's half holds.
    order = {id(v): i for i, v in enumerate(model.trainable_weights)}
    if order[id(kernel)] > order[id(bias)]:
        raise ValueError(
            f"`attach` needs the kernel {kernel.path!r} listed before its "
            f"bias {bias.path!r} in the model's weights to keep a "
            "Kronecker-factored memory in a plain Keras model; use "
            "`keras_memgeom.Model` for this model."
        )


def _remove_placed(regularizers, owners):
    for variable, regularizer in regularizers:
        _set_regularizer(variable, regularizer.base, owners)


def _set_regularizer(variable, regularizer, owners):
    variable.regularizer = regularizer
    if owners is not None and id(variable) in owners:
        layer, attribute = owners[id(variable)]
        setattr(layer, attribute, regularizer)


def _reset_traced_functions(model):
    # Traced steps read which variables carry a regularizer once, at trace time.
    model.train_function = None
    model.test_function = None
