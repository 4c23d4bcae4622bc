import keras
import numpy as np
import pytest

from keras_memgeom import layers as memgeom_layers
from keras_memgeom.memory import FisherMemory
from keras_memgeom.merging import merge_models
from keras_memgeom.symmetry import reorder
from tests.memory.helpers import classification_data
from tests.memory.helpers import softmax_probabilities
from tests.memory.helpers import softmax_regression

pytestmark = pytest.mark.usefixtures("full_precision")


def _mlp(seed, width=6, hidden=1):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((5,))]
    layers += [
        keras.layers.Dense(
            width, activation="relu", bias_initializer="random_normal"
        )
        for _ in range(hidden)
    ]
    model = keras.Sequential(layers + [keras.layers.Dense(3)])
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    return model


def _permuted_copy(model, permutation):
    kernel_1, bias_1, kernel_2, bias_2 = model.get_weights()
    copy = keras.models.clone_model(model)
    copy.set_weights(
        [
            kernel_1[:, permutation],
            bias_1[permutation],
            kernel_2[permutation],
            bias_2,
        ]
    )
    return copy


def _forward(model, x):
    """Each Dense layer's inputs and pre-activations, in float64 numpy."""
    weights = [w.astype("float64") for w in model.get_weights()]
    inputs, pre_activations, h = [], [], x.astype("float64")
    for k in range(0, len(weights), 2):
        inputs.append(h)
        z = h @ weights[k] + weights[k + 1]
        pre_activations.append(z)
        h = np.maximum(z, 0.0)
    return inputs, pre_activations


def _assert_same_weights(got, want, atol=1e-5):
    for g, w in zip(got.get_weights(), want.get_weights()):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=atol)


@pytest.mark.parametrize("method", ["average", "fisher", "regmean", "kfac"])
@pytest.mark.parametrize("repair", [False, True])
def test_merging_a_model_with_its_permuted_copies_gives_the_model(
    rng, method, repair
):
    model = _mlp(0)
    copies = [_permuted_copy(model, rng.permutation(6)) for _ in range(2)]
    data = [classification_data(rng, num_examples=40)] * 3
    merged = merge_models(
        [model] + copies, method=method, data=data, repair=repair
    )
    _assert_same_weights(merged, model)


def _two_heads(seed):
    """A hidden layer read by two output heads, one through BatchNorm."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(
        6, activation="relu", bias_initializer="random_normal"
    )(inputs)
    left = keras.layers.Dense(3)(hidden)
    right = keras.layers.BatchNormalization(
        gamma_initializer="random_normal", beta_initializer="random_normal"
    )(hidden)
    return keras.Model(inputs, [left, keras.layers.Dense(2)(right)])


@pytest.mark.parametrize("method", ["average", "regmean"])
def test_units_read_by_two_heads_are_aligned_in_both(rng, method):
    model = _two_heads(0)
    # A pure permutation of the shared units, moved in both heads.
    permuted = reorder(model)
    assert not np.allclose(permuted.get_weights()[0], model.get_weights()[0])
    data = [(rng.normal(size=(40, 5)).astype("float32"), np.zeros(40))] * 2
    merged = merge_models([model, permuted], method=method, data=data)
    _assert_same_weights(merged, model)


def test_without_alignment_permuted_copies_do_not_merge_to_the_model(rng):
    model = _mlp(0)
    unaligned = merge_models(
        [model, _permuted_copy(model, rng.permutation(6))], align=False
    )
    assert not np.allclose(unaligned.get_weights()[0], model.get_weights()[0])


def test_weighted_average_is_the_weighted_mean_of_the_weights():
    a, b = _mlp(0), _mlp(1)
    merged = merge_models([a, b], weights=[1.0, 3.0], align=False)
    for got, wa, wb in zip(
        merged.get_weights(), a.get_weights(), b.get_weights()
    ):
        np.testing.assert_allclose(
            got, 0.25 * wa + 0.75 * wb, rtol=1e-5, atol=1e-7
        )


def _closed_form_precision(model, x):
    p = softmax_probabilities(model, x)
    variance = p * (1 - p)
    return len(x) * np.mean(x[:, :, None] ** 2 * variance[:, None, :], axis=0)


def test_fisher_weighted_merge_is_the_precision_weighted_mean(rng):
    model_a, model_b = softmax_regression(), softmax_regression()
    model_b.set_weights(
        [
            w + rng.normal(size=w.shape).astype("float32")
            for w in model_b.get_weights()
        ]
    )
    x_a, y_a = classification_data(rng, num_examples=80)
    x_b, y_b = classification_data(rng, num_examples=120)
    x_b = 2.0 * x_b  # other inputs, other Fisher
    merged = merge_models(
        [model_a, model_b], data=[(x_a, y_a), (x_b, y_b)], align=False
    )
    p_a, p_b = (
        _closed_form_precision(model_a, x_a),
        _closed_form_precision(model_b, x_b),
    )
    expected = (
        p_a * model_a.get_weights()[0] + p_b * model_b.get_weights()[0]
    ) / (p_a + p_b)
    np.testing.assert_allclose(
        merged.get_weights()[0], expected, rtol=1e-4, atol=1e-6
    )


def _memory(model, fishers, num_examples):
    anchor = {
        v.path: keras.ops.convert_to_numpy(v) for v in model.trainable_variables
    }
    return FisherMemory(anchor, dict(zip(anchor, fishers)), num_examples)


def test_fisher_memories_are_permuted_with_the_units_they_describe(rng):
    a = _mlp(0)
    # Close to `a`, so that aligning it to `a` keeps its order.
    c = keras.models.clone_model(a)
    c.set_weights(
        [
            w + 0.01 * rng.normal(size=w.shape).astype("float32")
            for w in a.get_weights()
        ]
    )
    fisher_a = [
        rng.uniform(0.1, 2.0, size=w.shape).astype("float32")
        for w in a.get_weights()
    ]
    fisher_c = [
        rng.uniform(0.1, 2.0, size=w.shape).astype("float32")
        for w in a.get_weights()
    ]
    permutation = rng.permutation(6)
    b = _permuted_copy(c, permutation)
    fisher_b = [
        fisher_c[0][:, permutation],
        fisher_c[1][permutation],
        fisher_c[2][permutation],
        fisher_c[3],
    ]
    memories = [_memory(a, fisher_a, 10), _memory(b, fisher_b, 30)]
    merged = merge_models(
        [a, b], memories=memories, weights=[2.0, 1.0], prior_precision=1e-6
    )
    for got, wa, wc, fa, fc in zip(
        merged.get_weights(),
        a.get_weights(),
        c.get_weights(),
        fisher_a,
        fisher_c,
    ):
        pa, pc = 2.0 * (10 * fa + 1e-6), 1.0 * (30 * fc + 1e-6)
        np.testing.assert_allclose(
            got, (pa * wa + pc * wc) / (pa + pc), rtol=1e-4, atol=1e-6
        )


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_regmean_is_the_least_squares_merge_of_every_dense_layer(rng, alpha):
    a, b = _mlp(0), _mlp(1)
    x_a = rng.normal(size=(50, 5)).astype("float32")
    x_b = (2.0 * rng.normal(size=(70, 5)) + 1.0).astype("float32")
    data = [(x_a, np.zeros(50)), (x_b, np.zeros(70))]
    weights = np.array([1.0, 3.0]) / 4.0
    merged = merge_models(
        [a, b],
        method="regmean",
        data=data,
        align=False,
        weights=[1, 3],
        regmean_alpha=alpha,
    )
    inputs = [_forward(a, x_a)[0], _forward(b, x_b)[0]]
    for layer in range(2):
        precision, moment = 0.0, 0.0
        for w, model, layer_inputs in zip(weights, (a, b), inputs):
            x = np.concatenate(
                [layer_inputs[layer], np.ones((len(layer_inputs[layer]), 1))],
                axis=1,
            )
            gram = x.T @ x
            gram = alpha * gram + (1 - alpha) * np.diag(np.diag(gram))
            kernel, bias = model.get_weights()[2 * layer : 2 * layer + 2]
            precision = precision + w * gram
            moment = moment + w * gram @ np.concatenate(
                [kernel, bias[None]], axis=0
            )
        expected = np.linalg.solve(precision, moment)
        got_kernel, got_bias = merged.get_weights()[2 * layer : 2 * layer + 2]
        np.testing.assert_allclose(
            got_kernel, expected[:-1], rtol=1e-4, atol=1e-5
        )
        np.testing.assert_allclose(got_bias, expected[-1], rtol=1e-4, atol=1e-5)


def test_repair_restores_the_interpolated_unit_statistics(rng):
    a, b = _mlp(0, hidden=2), _mlp(1, hidden=2)
    x_a, x_b = (
        rng.normal(size=(60, 5)).astype("float32"),
        rng.normal(size=(40, 5)).astype("float32") + 0.5,
    )
    weights = np.array([0.25, 0.75])
    merged = merge_models(
        [a, b],
        data=[(x_a, np.zeros(60)), (x_b, np.zeros(40))],
        method="average",
        repair=True,
        align=False,
        weights=[1, 3],
    )
    _, z_a = _forward(a, x_a)
    _, z_b = _forward(b, x_b)
    _, z_merged = _forward(merged, np.concatenate([x_a, x_b]))
    for layer in range(2):  # the hidden layers
        target_mean = weights[0] * z_a[layer].mean(0) + weights[1] * z_b[
            layer
        ].mean(0)
        target_std = weights[0] * z_a[layer].std(0) + weights[1] * z_b[
            layer
        ].std(0)
        np.testing.assert_allclose(
            z_merged[layer].mean(0), target_mean, rtol=1e-3, atol=1e-4
        )
        np.testing.assert_allclose(
            z_merged[layer].std(0), target_std, rtol=1e-3, atol=1e-4
        )


@pytest.mark.parametrize("method", ["average", "fisher", "regmean", "kfac"])
def test_without_alignment_the_order_of_the_models_does_not_matter(rng, method):
    models = [_mlp(seed) for seed in range(3)]
    data = [classification_data(rng, num_examples=30) for _ in range(3)]
    weights = [1.0, 2.0, 3.0]
    order = [2, 0, 1]
    merged = merge_models(
        models,
        method=method,
        data=data,
        weights=weights,
        align=False,
        repair=True,
    )
    reordered = merge_models(
        [models[k] for k in order],
        method=method,
        data=[data[k] for k in order],
        weights=[weights[k] for k in order],
        align=False,
        repair=True,
    )
    _assert_same_weights(reordered, merged)


def _tanh_mlp(seed, width=4):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(
                width, activation="tanh", bias_initializer="random_normal"
            ),
            keras.layers.Dense(3, bias_initializer="random_normal"),
        ]
    )
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    return model


def _kfac_factors(model, x):
    """Per Dense layer, `(n A, G)` of the exact Fisher in closed form.

    `A` is the mean of `[h, 1] [h, 1]^T` over the layer's inputs `h`, `G`
    the mean over examples of `J^T (diag(p) - p p^T) J`, `J` the Jacobian
    of the logits in the layer's pre-activations.
    """
    kernel_1, bias_1, kernel_2, bias_2 = (
        w.astype("float64") for w in model.get_weights()
    )
    x = x.astype("float64")
    h = np.tanh(x @ kernel_1 + bias_1)
    logits = h @ kernel_2 + bias_2
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    output = np.stack([np.diag(q) - np.outer(q, q) for q in p])
    # d logits / d z1 = W2^T diag(1 - h^2).
    jacobian = kernel_2.T[None] * (1 - h**2)[:, None, :]
    hidden = np.einsum("nci,ncd,ndj->nij", jacobian, output, jacobian)
    factors = []
    for inputs, g in ((x, hidden.mean(0)), (h, output.mean(0))):
        rows = np.concatenate([inputs, np.ones((len(inputs), 1))], axis=1)
        factors.append((rows.T @ rows, g))  # n A: the sum of the outer products
    return factors


@pytest.mark.parametrize("num_models", [2, 3])
def test_kfac_merge_solves_the_normal_equations_of_the_kronecker_sum(
    rng, num_models
):
    models = [_tanh_mlp(seed) for seed in range(num_models)]
    data = [
        (rng.normal(size=(n, 3)).astype("float32") * (1 + k), np.zeros(n))
        for k, n in enumerate((40, 70, 30))
    ]
    data = data[:num_models]
    weights = np.array([1.0, 3.0, 2.0][:num_models])
    merged = merge_models(
        models, method="kfac", data=data, weights=weights, align=False
    )
    weights = weights / weights.sum()
    factors = [_kfac_factors(m, x) for m, (x, _) in zip(models, data)]
    for layer in range(2):

        def stacked(model):
            kernel, bias = model.get_weights()[2 * layer : 2 * layer + 2]
            return np.concatenate([kernel, bias[None]], axis=0).astype(
                "float64"
            )

        # (sum_k w_k A_k (x) G_k) vec(W) = sum_k w_k (A_k (x) G_k) vec(W_k),
        # row-major vec.
        terms = [
            (w, f[layer][0], f[layer][1], stacked(m))
            for w, f, m in zip(weights, factors, models)
        ]
        residual = sum(
            w * a @ (stacked(merged) - anchor) @ g for w, a, g, anchor in terms
        )
        scale = sum(
            np.linalg.norm(w * a @ anchor @ g) for w, a, g, anchor in terms
        )
        assert np.linalg.norm(residual) < 1e-5 * scale
        # Not every solution: the average does not solve them.
        average = sum(w * anchor for w, _, _, anchor in terms)
        assert (
            np.linalg.norm(
                sum(w * a @ (average - anchor) @ g for w, a, g, anchor in terms)
            )
            > 1e-2 * scale
        )


def test_kfac_merge_of_two_models_does_not_depend_on_their_order(rng):
    # Two models take the `merge_anchor` solve, whose unconstrained directions
    # (the softmax's all-ones one) must still land on the weighted average.
    a, b = _tanh_mlp(0), _tanh_mlp(1)
    data = [
        (rng.normal(size=(n, 3)).astype("float32"), np.zeros(n))
        for n in (40, 60)
    ]
    merged = merge_models(
        [a, b], method="kfac", data=data, weights=[1.0, 3.0], align=False
    )
    reordered = merge_models(
        [b, a], method="kfac", data=data[::-1], weights=[3.0, 1.0], align=False
    )
    _assert_same_weights(reordered, merged)
    # Adding a constant to every logit is unconstrained: the output layer's
    # mean over the classes is the weighted average's.
    for k in (2, 3):
        want = 0.25 * a.get_weights()[k].mean(-1) + 0.75 * b.get_weights()[
            k
        ].mean(-1)
        np.testing.assert_allclose(
            merged.get_weights()[k].mean(-1), want, rtol=1e-4, atol=1e-5
        )


def test_kfac_memories_are_permuted_with_the_units_they_describe(rng):
    a = _tanh_mlp(0)
    c = keras.models.clone_model(a)
    c.set_weights(
        [
            w + 0.05 * rng.normal(size=w.shape).astype("float32")
            for w in a.get_weights()
        ]
    )
    permutation = rng.permutation(4)
    kernel_1, bias_1, kernel_2, bias_2 = c.get_weights()
    b = keras.models.clone_model(c)
    b.set_weights(
        [
            kernel_1[:, permutation],
            bias_1[permutation],
            kernel_2[permutation],
            bias_2,
        ]
    )
    x_a, x_c = (
        rng.normal(size=(50, 3)).astype("float32"),
        2.0 * rng.normal(size=(30, 3)).astype("float32"),
    )
    memories = [
        FisherMemory.estimate(m, (x, np.zeros(len(x))), structure="kfac")
        for m, x in ((a, x_a), (b, x_c))
    ]
    merged = merge_models([a, b], method="kfac", memories=memories)
    # `b` aligned to `a` is `c`: the merge must solve the normal equations of
    # `a` and `c`.
    factors = [_kfac_factors(a, x_a), _kfac_factors(c, x_c)]
    for layer in range(2):
        stack = lambda m: np.concatenate(
            [m.get_weights()[2 * layer], m.get_weights()[2 * layer + 1][None]]
        )
        terms = [
            (f[layer][0], f[layer][1], stack(m))
            for f, m in zip(factors, (a, c))
        ]
        residual = sum(
            fa @ (stack(merged) - anchor) @ g for fa, g, anchor in terms
        )
        assert np.linalg.norm(residual) < 1e-5 * sum(
            np.linalg.norm(fa @ anchor @ g) for fa, g, anchor in terms
        )


def test_bad_merges_are_refused(rng):
    model, other = _mlp(0), _mlp(1)
    data = [classification_data(rng)] * 2
    with pytest.raises(ValueError, match="at least two"):
        merge_models([model])
    with pytest.raises(ValueError, match="`data` needs one entry per model"):
        merge_models([model, other], data=data[:1])
    with pytest.raises(
        ValueError, match="`data` must be a list with one data set per model"
    ):
        merge_models([model, other], data=data[0])
    with pytest.raises(ValueError, match="architecture.*dense"):
        merge_models([model, _mlp(1, width=7)])
    with pytest.raises(ValueError, match="Unknown merge method 'median'"):
        merge_models([model, other], method="median")
    with pytest.raises(ValueError, match="kfac.*`memories`.*`data`"):
        merge_models([model, other], method="kfac")
    diagonal = [FisherMemory.estimate(m, data[0]) for m in (model, other)]
    with pytest.raises(ValueError, match="kfac.*Kronecker-factored memories"):
        merge_models([model, other], method="kfac", memories=diagonal)
    with pytest.raises(ValueError, match="fisher.*`memories`.*`data`"):
        merge_models([model, other], method="fisher")
    with pytest.raises(ValueError, match="regmean.*needs `data`"):
        merge_models([model, other], method="regmean")
    with pytest.raises(ValueError, match="repair=True needs `data`"):
        merge_models([model, other], repair=True)
    with pytest.raises(ValueError, match="`regmean_alpha` must be <= 1"):
        merge_models(
            [model, other], method="regmean", data=data, regmean_alpha=1.5
        )
    with pytest.raises(ValueError, match="`memories` takes FisherMemory"):
        merge_models([model, other], memories=["a", "b"])


@pytest.mark.parametrize(
    "weights, message",
    [
        ([1.0], "one weight per model"),
        ([1.0, -1.0], r"weights\[1\]"),
        ([1.0, float("nan")], r"weights\[1\]"),
        ([0.0, 0.0], "positive sum"),
    ],
)
def test_bad_weights_are_refused(weights, message):
    with pytest.raises(ValueError, match=message):
        merge_models([_mlp(0), _mlp(1)], weights=weights)


def _conv(seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(
                3,
                3,
                strides=2,
                padding="same",
                activation="relu",
                bias_initializer="random_normal",
                name="features",
            ),
            keras.layers.Flatten(),
            keras.layers.Dense(4),
        ]
    )


def _conv_rows(model, x):
    """Input patches (kernel order kh, kw, channels) and the conv's outputs."""
    kernel, bias = (w.astype("float64") for w in model.get_weights()[:2])
    # "same" with stride 2 on 6 pixels: 3 outputs, one padding pixel, after.
    padded = np.pad(x.astype("float64"), [(0, 0), (0, 1), (0, 1), (0, 0)])
    rows = np.array(
        [
            padded[n, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3, :].ravel()
            for n in range(len(x))
            for i in range(3)
            for j in range(3)
        ]
    )
    return rows, rows @ kernel.reshape(-1, 3) + bias


def test_regmean_merges_conv2d_layers_on_their_input_patches(rng):
    a, b = _conv(0), _conv(1)
    x_a = rng.normal(size=(30, 6, 6, 2)).astype("float32")
    x_b = rng.normal(size=(20, 6, 6, 2)).astype("float32") + 0.5
    rows_a, z_a = _conv_rows(a, x_a)
    # The patches reproduce the layer: they are what its kernel multiplies.
    np.testing.assert_allclose(
        np.maximum(z_a, 0).reshape(30, 3, 3, 3),
        keras.ops.convert_to_numpy(a.layers[0](x_a)),
        rtol=1e-4,
        atol=1e-5,
    )
    rows_b, _ = _conv_rows(b, x_b)
    merged = merge_models(
        [a, b],
        method="regmean",
        data=[x_a, x_b],
        align=False,
        regmean_alpha=1.0,
    )
    precision, moment = 0.0, 0.0
    for model, rows in ((a, rows_a), (b, rows_b)):
        rows = np.concatenate([rows, np.ones((len(rows), 1))], axis=1)
        kernel, bias = model.get_weights()[:2]
        precision = precision + 0.5 * rows.T @ rows
        moment = moment + 0.5 * rows.T @ rows @ np.concatenate(
            [kernel.reshape(-1, 3), bias[None]]
        )
    expected = np.linalg.solve(precision, moment)
    np.testing.assert_allclose(
        merged.get_weights()[0].reshape(-1, 3),
        expected[:-1],
        rtol=1e-4,
        atol=1e-5,
    )
    np.testing.assert_allclose(
        merged.get_weights()[1], expected[-1], rtol=1e-4, atol=1e-5
    )


def test_repair_restores_the_channel_statistics_of_conv2d_layers(rng):
    a, b = _conv(0), _conv(1)
    x = rng.normal(size=(30, 6, 6, 2)).astype("float32")
    merged = merge_models(
        [a, b], data=[x, x], method="average", repair=True, align=False
    )
    z_a, z_b, z_merged = (_conv_rows(m, x)[1] for m in (a, b, merged))
    np.testing.assert_allclose(
        z_merged.mean(0),
        0.5 * (z_a.mean(0) + z_b.mean(0)),
        rtol=1e-3,
        atol=1e-4,
    )
    np.testing.assert_allclose(
        z_merged.std(0), 0.5 * (z_a.std(0) + z_b.std(0)), rtol=1e-3, atol=1e-4
    )


def test_layers_a_method_cannot_merge_are_named(rng):
    def polynomial(seed):
        keras.utils.set_random_seed(seed)
        return keras.Sequential(
            [
                keras.Input((5,)),
                memgeom_layers.PolynomialDense(4, degree=2, name="curvy"),
                keras.layers.Dense(3),
            ]
        )

    data = [classification_data(rng, num_examples=10)] * 2
    with pytest.raises(ValueError, match="regmean.*'curvy'.*PolynomialDense"):
        merge_models(
            [polynomial(0), polynomial(1)], method="regmean", data=data
        )
    with pytest.raises(ValueError, match="REPAIR.*'curvy'.*PolynomialDense"):
        merge_models(
            [polynomial(0), polynomial(1)],
            data=data,
            method="average",
            repair=True,
        )
