"""keras-hub task models: their Fisher, its Kronecker blocks, and saving.

Tiny backbones built from configs with random weights: nothing is
downloaded. A keras-hub task's layers build their sublayers from their own
configs, so `attach` refuses it; `keras_memgeom.Model(task.inputs,
task.outputs)` is the model that trains with memories.
"""

import warnings

import keras
import numpy as np
import pytest

import keras_memgeom
from keras_memgeom import FisherMemory
from keras_memgeom.src.memory.attach import attached_regularizers
from keras_memgeom.src.memory.fisher import estimate_fisher
from keras_memgeom.src.memory.layer_taps import LayerTaps
from tests.memory.helpers import exact_fisher_sums
from tests.memory.test_saving import _closed_form
from tests.memory.test_saving import _penalty
from tests.memory.test_saving import _random_memory

keras_hub = pytest.importorskip("keras_hub")

pytestmark = pytest.mark.usefixtures("full_precision")

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
CLASSES = 3
LENGTH = 6


def _bert():
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=20,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=LENGTH,
    )
    return keras_hub.models.BertTextClassifier(
        backbone, num_classes=CLASSES, preprocessor=None
    )


def _bert_data(rng, n):
    """Token ids, segments and padding masks; the first example is padded."""
    padding_mask = np.ones((n, LENGTH), "int32")
    padding_mask[0, 4:] = 0
    x = {
        "token_ids": rng.integers(1, 20, (n, LENGTH)).astype("int32")
        * padding_mask,
        "segment_ids": (np.arange(LENGTH) >= 3).astype("int32")
        * np.ones((n, 1), "int32"),
        "padding_mask": padding_mask,
    }
    return x, rng.integers(0, CLASSES, n)


def _gpt2(vocabulary_size=8):
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=vocabulary_size,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=LENGTH,
    )
    return keras_hub.models.GPT2CausalLM(backbone, preprocessor=None)


def _gpt2_data(rng, n, vocabulary_size=8):
    """Next-token data; the padding mask is the loss's sample weight."""
    padding_mask = np.ones((n, LENGTH), "int32")
    padding_mask[0, 3:] = 0
    tokens = rng.integers(0, vocabulary_size, (n, LENGTH + 1)).astype("int32")
    x = {"token_ids": tokens[:, :-1], "padding_mask": padding_mask}
    return x, tokens[:, 1:], padding_mask.astype("float32")


def _one_at_a_time(x):
    """The model's inputs one example at a time (batches of one)."""
    n = len(next(iter(x.values())))
    return [{k: v[b : b + 1] for k, v in x.items()} for b in range(n)]


def _remembering(task):
    """`task` as the package's functional model, compiled without memories."""
    model = keras_memgeom.Model(task.inputs, task.outputs)
    model.compile(keras.optimizers.SGD(0.01), LOSS)
    return model


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_bert_classifier_fisher_is_the_per_example_loop(rng, lora):
    classifier = _bert()
    if lora:
        # The backbone trains only its LoRA factors and the biases of the
        # layers holding them; the memory remembers what trains.
        classifier.backbone.enable_lora(2)
    model = _remembering(classifier)
    for variable in model.trainable_variables:
        if "lora_kernel_b" in variable.path:
            # Trained factors: zero ones (the start) leave `a` no gradient.
            variable.assign(0.3 * rng.normal(size=variable.shape))
    x, y = _bert_data(rng, 3)
    fisher, n = estimate_fisher(model, (x, y))
    sums = exact_fisher_sums(model, _one_at_a_time(x), np.ones(len(y)))
    assert n == len(y) and sorted(fisher) == sorted(sums)
    assert lora == any("lora_kernel" in path for path in fisher)
    for path, total in sums.items():
        assert np.abs(total).max() > 0, path
        np.testing.assert_allclose(
            fisher[path], total / n, rtol=2e-5, atol=1e-9, err_msg=path
        )


def test_gpt2_fisher_weighs_tokens_by_the_padding_mask(rng):
    model = _remembering(_gpt2())
    x, y, weights = _gpt2_data(rng, 2)
    fisher, n = estimate_fisher(model, (x, y, weights))
    sums = exact_fisher_sums(model, _one_at_a_time(x), weights)
    # The logits carry no Keras mask: a zero weight drops a padded token's
    # information but it still counts, as in Keras's loss, which divides the
    # weighted sum by every token.
    assert n == y.size
    logits = model.predict(x, verbose=0)
    per_token = keras.ops.convert_to_numpy(
        keras.losses.sparse_categorical_crossentropy(y, logits, True)
    )
    np.testing.assert_allclose(
        float(LOSS(y, logits, sample_weight=weights)),
        np.sum(per_token * weights) / n,
        rtol=1e-5,
    )
    for path, total in sums.items():
        np.testing.assert_allclose(
            fisher[path], total / n, rtol=2e-5, atol=1e-9, err_msg=path
        )


def _decoder(name):
    """A tiny Gemma- or Llama-style causal LM (RMS normalizations)."""
    config = dict(
        vocabulary_size=8,
        num_layers=1,
        num_query_heads=2,
        num_key_value_heads=1,
        hidden_dim=8,
        intermediate_dim=16,
    )
    if name == "gemma":
        backbone = keras_hub.models.GemmaBackbone(head_dim=4, **config)
        return keras_hub.models.GemmaCausalLM(backbone, preprocessor=None)
    backbone = keras_hub.models.LlamaBackbone(**config)
    return keras_hub.models.LlamaCausalLM(backbone, preprocessor=None)


@pytest.mark.parametrize("name", ["gemma", "llama"])
def test_decoder_fisher_is_the_per_example_loop(rng, name):
    # Their RMS normalizations have a rule; only the embedding, called
    # twice (tokens in, logits out), takes the vectorized path.
    model = _remembering(_decoder(name))
    x, y, weights = _gpt2_data(rng, 2)
    tapped = {v.path for v in LayerTaps(model).probe(x).variables}
    generic = {v.path for v in model.trainable_variables} - tapped
    assert generic and all("token_embedding" in p for p in generic)
    assert any("norm" in p for p in tapped)
    fisher, n = estimate_fisher(model, (x, y, weights))
    sums = exact_fisher_sums(model, _one_at_a_time(x), weights)
    assert n == y.size and sorted(fisher) == sorted(sums)
    for path, total in sums.items():
        np.testing.assert_allclose(
            fisher[path], total / n, rtol=2e-5, atol=1e-9, err_msg=path
        )
    # K-FAC factors every projection, Gemma's heads-first ones included.
    memory = FisherMemory.estimate(
        model, (x, y, weights), structure="kfac", estimator="sampled"
    )
    for layer in _dense_layers(model):
        assert memory.structure_of(layer.kernel.path) == "kfac", layer.name


def _dense_layers(model):
    return [
        layer
        for layer in model._flatten_layers()
        if isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense))
    ]


@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_kfac_factors_every_dense_and_einsum_dense(rng, name):
    if name == "bert":
        model = _remembering(_bert())
        data = _bert_data(rng, 4)
    else:
        model = _remembering(_gpt2())
        data = _gpt2_data(rng, 3)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        memory = FisherMemory.estimate(model, data, structure="kfac")
    layers = _dense_layers(model)
    # Four attention projections, two feed-forward layers (and BERT's
    # pooler and classifier).
    assert len(layers) == (8 if name == "bert" else 6)
    factored = set()
    for layer in layers:
        block = memory.kronecker[layer.kernel.path]
        fan_in = int(np.prod(layer.kernel.shape)) // block.g.shape[0]
        assert block.a.shape == (fan_in + 1, fan_in + 1), layer.name
        factored |= {layer.kernel.path, layer.bias.path}
    # Token, segment and position embeddings have a diagonal input factor,
    # unless the token embedding is also the output projection (GPT-2's,
    # tied).
    for layer in model._flatten_layers():
        if isinstance(layer, keras_hub.layers.PositionEmbedding):
            table = layer.position_embeddings
        elif isinstance(layer, keras.layers.Embedding) and not (
            name == "gpt2" and layer.name == "token_embedding"
        ):
            table = layer.embeddings
        else:
            continue
        block = memory.kronecker[table.path]
        assert block.a.shape == (table.shape[0],), layer.name
        factored.add(table.path)
    # Only the tied token embedding and the normalizations fall back to a
    # diagonal.
    diagonal = {p for p in memory.paths if memory.structure_of(p) != "kfac"}
    assert diagonal == set(memory.paths) - factored
    assert all("token_embedding" in p or "norm" in p for p in diagonal)
    (warning,) = [w for w in record if "diagonal Fisher" in str(w.message)]
    assert not any(p in str(warning.message) for p in factored)


def test_bert_classifier_trains_with_its_memory_and_keeps_it(tmp_path, rng):
    classifier = _bert()
    # A plain model cannot keep these penalties, and says which.
    with pytest.raises(ValueError, match="attention") as refused:
        keras_memgeom.attach(
            classifier,
            _random_memory(rng, classifier),
            num_train_examples=10,
        )
    assert "query/kernel" in str(refused.value)
    assert not attached_regularizers(classifier)
    model = _remembering(classifier)
    x, y = _bert_data(rng, 10)
    memory = _random_memory(rng, model)
    model.compile(
        keras.optimizers.SGD(0.5),
        LOSS,
        memories=[memory],
        strength=3.0,
        num_train_examples=len(y),
    )
    model.fit(x, y, epochs=2, batch_size=5, verbose=0)
    expected = _closed_form(memory, model, len(y), 3.0)
    assert expected > 0.0  # training moved the weights off the memory
    np.testing.assert_allclose(_penalty(model), expected, rtol=1e-5)
    model.save(tmp_path / "bert.keras")
    loaded = keras.saving.load_model(tmp_path / "bert.keras")
    np.testing.assert_allclose(_penalty(loaded), expected, rtol=1e-5)
    # Every variable of the model is remembered, and penalized again.
    assert len(memory.paths) == len(model.trainable_variables)
    assert len(attached_regularizers(loaded)) == len(
        attached_regularizers(model)
    )
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5
    )


def test_gpt2_causal_lm_trains_with_its_memory_and_keeps_its_weights(
    tmp_path, rng
):
    # The functional wrapper of a causal LM reuses the backbone's token
    # embedding for its logits, which Keras cannot reload from a `.keras`
    # file (with or without memories): the weights and the memory are
    # saved apart, and the model is rebuilt from its configs.
    x, y, weights = _gpt2_data(rng, 4)
    model = _remembering(_gpt2())
    memory = _random_memory(rng, model)
    tokens = int(weights.size)
    model.compile(
        keras.optimizers.SGD(0.5),
        LOSS,
        memories=[memory],
        strength=2.0,
        num_train_examples=tokens,
    )
    history = model.fit(
        x, y, sample_weight=weights, epochs=2, batch_size=2, verbose=0
    )
    assert "memory_penalty" in history.history
    expected = _closed_form(memory, model, tokens, 2.0)
    assert expected > 0.0
    np.testing.assert_allclose(_penalty(model), expected, rtol=1e-5)
    model.save_weights(tmp_path / "gpt2.weights.h5")
    memory.save(tmp_path / "gpt2.memory")
    keras.backend.clear_session()
    rebuilt = _remembering(_gpt2())
    rebuilt.load_weights(tmp_path / "gpt2.weights.h5")
    rebuilt.compile(
        keras.optimizers.SGD(0.5),
        LOSS,
        memories=[FisherMemory.load(tmp_path / "gpt2.memory")],
        strength=2.0,
        num_train_examples=tokens,
    )
    np.testing.assert_allclose(_penalty(rebuilt), expected, rtol=1e-5)
    np.testing.assert_allclose(
        rebuilt.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5
    )
