"""Memories on several (simulated) devices agree with one device."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_memgeom

BACKEND = keras.backend.backend()

_COMMON = """
import numpy as np
import keras
import keras_memgeom

rng = np.random.default_rng(0)
x = rng.normal(size=(64, 5)).astype("float32")
y = rng.integers(0, 4, 64)
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def make():
    keras.utils.set_random_seed(0)
    model = keras_memgeom.Sequential(
        [keras.Input((5,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(4)]
    )
    model.compile(keras.optimizers.SGD(0.1), LOSS)
    return model


def relative(a, b):
    return max(float(np.abs(u - v).max() / max(np.abs(u).max(), 1e-12)) for u, v in zip(a, b))


def fisher_list(memory):
    return [memory.fisher[p] for p in memory.paths]


def fit_with_memory(model, memory):
    model.compile(keras.optimizers.SGD(0.1), LOSS, regularizers=[memory], strength=10.0)
    model.set_weights([w + 0.1 for w in model.get_weights()])
    model.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    return model.get_weights()
"""


def _run(script, env_extra, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(env_extra)
    path = tmp_path / "script.py"
    path.write_text(_COMMON + textwrap.dedent(script))
    result = subprocess.run(
        [sys.executable, str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution runs on JAX")
def test_data_and_model_parallel_memories_equal_one_device(tmp_path):
    out = _run(
        """
        devices = keras.distribution.list_devices()
        assert len(devices) == 4, devices
        single = make()
        memories = {s: keras_memgeom.FisherMemory.estimate(single, (x, y), structure=s)
                    for s in ("diagonal", "kfac")}
        weights = fit_with_memory(make(), memories["diagonal"])
        with keras.distribution.DataParallel(devices=devices).scope():
            model = make()
            for structure, memory in memories.items():
                spread = keras_memgeom.FisherMemory.estimate(model, (x, y), structure=structure)
                assert relative(fisher_list(memory), fisher_list(spread)) < 1e-5, structure
            assert relative(weights, fit_with_memory(make(), memories["diagonal"])) < 1e-5
        mesh = keras.distribution.DeviceMesh((2, 2), ["batch", "model"], devices)
        layout_map = keras.distribution.LayoutMap(mesh)
        layout_map[".*dense.*kernel"] = (None, "model")
        with keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch").scope():
            model = make()
            memory = keras_memgeom.FisherMemory.estimate(model, (x, y))
            model.compile("sgd", LOSS, regularizers=[memory], num_train_examples=64)
            from keras_memgeom.memory.attach import attached_regularizers
            for variable, regularizer in attached_regularizers(model):
                assert regularizer.anchor.value.sharding == variable.value.sharding, variable.path
                assert regularizer.fisher.value.sharding == variable.value.sharding, variable.path
            kernel = model.layers[0].kernel
            assert "model" in str(attached_regularizers(model)[0][1].anchor.value.sharding)
            model.fit(x, y, epochs=1, batch_size=16, verbose=0)
            memory.save("spread.memory")
            np.savez("expected.npz", *fisher_list(memory))
        print("ok")
        """,
        {
            "KERAS_BACKEND": "jax",
            "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        },
        tmp_path,
    )
    assert "ok" in out
    # Saved on four devices, loaded on one.
    loaded = keras_memgeom.FisherMemory.load(tmp_path / "spread.memory")
    expected = np.load(tmp_path / "expected.npz")
    for i, path in enumerate(loaded.paths):
        np.testing.assert_array_equal(loaded.fisher[path], expected[f"arr_{i}"])


@pytest.mark.skipif(
    BACKEND != "tensorflow", reason="tf.distribute runs on TensorFlow"
)
def test_mirrored_strategy_memories_equal_one_device(tmp_path):
    out = _run(
        """
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        single = make()
        memory = keras_memgeom.FisherMemory.estimate(single, (x, y))
        weights = fit_with_memory(make(), memory)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            model = make()
            spread = keras_memgeom.FisherMemory.estimate(model, (x, y))
            assert relative(fisher_list(memory), fisher_list(spread)) < 1e-5
            assert relative(weights, fit_with_memory(make(), memory)) < 1e-4
        print("ok")
        """,
        {"KERAS_BACKEND": "tensorflow"},
        tmp_path,
    )
    assert "ok" in out


@pytest.mark.skipif(BACKEND != "torch", reason="the torch refusal")
def test_a_distribution_on_torch_is_refused_not_ignored(rng):
    from keras.src.distribution import distribution_lib

    model = keras_memgeom.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    x = rng.normal(size=(8, 5)).astype("float32")
    y = rng.integers(0, 3, 8)
    mesh = keras.distribution.DeviceMesh(
        shape=(1,), axis_names=["batch"], devices=["cpu:0"]
    )
    # Keras accepts this on torch, then runs on one device.
    with keras.distribution.DataParallel(device_mesh=mesh).scope():
        with pytest.raises(NotImplementedError, match="torch"):
            keras_memgeom.FisherMemory.estimate(model, (x, y))
        with pytest.raises(NotImplementedError, match="torch"):
            model.fit(x, y, verbose=0)
    assert distribution_lib.distribution() is None
