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
        [
            keras.Input((5,)),
            keras.layers.Dense(8, activation="tanh"),
            keras.layers.Dense(4),
        ]
    )
    model.compile(keras.optimizers.SGD(0.1), LOSS)
    return model


def relative(a, b):
    return max(
        float(np.abs(u - v).max() / max(np.abs(u).max(), 1e-12))
        for u, v in zip(a, b)
    )


def fisher_list(memory):
    return [memory.fisher[p] for p in memory.paths]


def factors(memory):
    # The diagonal, then every Kronecker factor, in order: the paths of two
    # models differ by their auto-numbered names.
    blocks = memory.kronecker.values()
    return fisher_list(memory) + [f for b in blocks for f in (b.a, b.g)]


def fit_with_memory(model, memory):
    model.compile(
        keras.optimizers.SGD(0.1), LOSS, memories=[memory], strength=10.0
    )
    model.set_weights([w + 0.1 for w in model.get_weights()])
    model.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    return model.get_weights()


RUNS = [
    (estimator, structure)
    for estimator in ("exact", "empirical", "sampled")
    for structure in ("diagonal", "kfac")
]


def estimate(model, data, run):
    return keras_memgeom.FisherMemory.estimate(
        model, data, estimator=run[0], structure=run[1], batch_size=32
    )
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
        expected = {run: estimate(single, (x, y), run) for run in RUNS}
        memory = expected["exact", "diagonal"]
        weights = fit_with_memory(make(), memory)
        with keras.distribution.DataParallel(devices=devices).scope():
            model = make()
            for run, alone in expected.items():
                spread = estimate(model, (x, y), run)
                assert relative(factors(alone), factors(spread)) < 1e-5, run
            fitted = fit_with_memory(make(), memory)
            assert relative(weights, fitted) < 1e-5
        mesh = keras.distribution.DeviceMesh(
            (2, 2), ["batch", "model"], devices
        )
        layout_map = keras.distribution.LayoutMap(mesh)
        layout_map[".*dense.*kernel"] = (None, "model")
        with keras.distribution.ModelParallel(
            layout_map=layout_map, batch_dim_name="batch"
        ).scope():
            model = make()
            memory = keras_memgeom.FisherMemory.estimate(model, (x, y))
            model.compile(
                "sgd", LOSS, memories=[memory], num_train_examples=64
            )
            from keras_memgeom.src.memory.attach import attached_regularizers

            attached = attached_regularizers(model)
            for variable, regularizer in attached:
                sharding = variable.value.sharding
                assert regularizer.anchor.value.sharding == sharding
                assert regularizer.fisher.value.sharding == sharding
            assert "model" in str(attached[0][1].anchor.value.sharding)
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
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
        from keras_memgeom.src.memory import fisher

        # Which replica traced the per-batch work, and on how many rows.
        traced = []
        per_batch = fisher._BatchStep._squared_gradients

        def recording(self, values, x, *rest):
            context = tf.distribute.get_replica_context()
            if tf.distribute.has_strategy() and context is not None:
                replica = context.replica_id_in_sync_group.name
                traced.append((replica, x.shape[0]))
            return per_batch(self, values, x, *rest)

        fisher._BatchStep._squared_gradients = recording
        single = make()
        expected = {run: estimate(single, (x, y), run) for run in RUNS}
        weights = fit_with_memory(make(), expected["exact", "diagonal"])
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            model = make()
            for run, alone in expected.items():
                traced.clear()
                spread = estimate(model, (x, y), run)
                assert relative(factors(alone), factors(spread)) < 1e-5, run
                # Each replica traced its own step on its half of a batch.
                assert {n for _, n in traced} == {16}, traced
                assert len({name for name, _ in traced}) == 2, traced
            # 65 examples: a last batch of one row, fewer rows than replicas.
            x65, y65 = np.concatenate([x, x[:1]]), np.concatenate([y, y[:1]])
            spread = estimate(model, (x65, y65), RUNS[0])
            alone = estimate(single, (x65, y65), RUNS[0])
            assert relative(fisher_list(alone), fisher_list(spread)) < 1e-5
            assert spread.num_examples == 65
            memory = expected["exact", "diagonal"]
            assert relative(weights, fit_with_memory(make(), memory)) < 1e-4

            # The backend contract: every replica keeps the sums of its own
            # share of every batch; the total is reduced once at the end.
            from keras_memgeom import backend

            counter = keras.Variable(1.0)
            placed = set()

            def sums(values, rows):
                total = keras.ops.sum(rows, axis=0) * values[0]
                placed.add(total.device[-5:])  # where each replica's ops run
                count = keras.ops.sum(keras.ops.ones_like(rows[:, 0]))
                return [total, count], []

            step = backend.batch_step(sums, [counter])
            totals = None
            for start in (0, 32):
                totals, _ = step(totals, (x[start : start + 32],))
            per_replica = strategy.experimental_local_results(totals[0])
            assert placed == {"CPU:0", "CPU:1"}, placed
            halves = [
                np.concatenate([x[:16], x[32:48]]),
                np.concatenate([x[16:32], x[48:]]),
            ]
            for local, half in zip(per_replica, halves):
                np.testing.assert_allclose(
                    local.numpy(), half.sum(0), rtol=1e-5
                )
            total, rows = backend.batch_total(totals)
            np.testing.assert_allclose(np.asarray(total), x.sum(0), rtol=1e-5)
            assert int(rows) == 64
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


@pytest.mark.parametrize(
    "likelihood",
    [
        keras_memgeom.memory.Categorical(),
        keras_memgeom.memory.Bernoulli(),
        keras_memgeom.memory.Gaussian(),
    ],
    ids=lambda likelihood: type(likelihood).__name__,
)
def test_sampled_noise_depends_only_on_the_global_example(likelihood):
    from keras_memgeom.src.memory.fisher import sampled_noise

    whole = sampled_noise(likelihood, 3, 0, 200, 4, 2)
    assert whole.shape == (200, 2, 4)
    # Any cut of the examples (batches, processes' shares) draws the same.
    for cut in (1, 63, 64, 65, 150):
        first = sampled_noise(likelihood, 3, 0, cut, 4, 2)
        rest = sampled_noise(likelihood, 3, cut, 200 - cut, 4, 2)
        np.testing.assert_array_equal(np.concatenate([first, rest]), whole)
    other = sampled_noise(likelihood, 4, 0, 200, 4, 2)
    assert not np.allclose(other, whole)


def test_sampled_fisher_of_two_processes_sums_to_one_process(rng, monkeypatch):
    """Each process draws the labels of its own rows of a global batch."""
    from keras_memgeom import backend
    from keras_memgeom.src.memory.fisher import estimate_fisher

    x = rng.normal(size=(96, 5)).astype("float32")
    y = rng.integers(0, 4, 96)
    model = keras_memgeom.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(8, activation="tanh"),
            keras.layers.Dense(4),
        ]
    )
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    options = dict(estimator="sampled", num_samples=2, seed=5)
    for structure in ("diagonal", "kfac"):
        whole = estimate_fisher(
            model, (x, y), batch_size=32, structure=structure, **options
        )
        shares = []
        for process in range(2):
            # Global batches of 32 rows: this process holds 16 of each.
            monkeypatch.setattr(
                backend,
                "global_batch_position",
                lambda rows, p=process: (p * rows, 2 * rows),
            )
            rows = np.concatenate(
                [
                    np.arange(s + 16 * process, s + 16 * (process + 1))
                    for s in range(0, 96, 32)
                ]
            )
            shares.append(
                estimate_fisher(
                    model,
                    (x[rows], y[rows]),
                    batch_size=16,
                    structure=structure,
                    **options,
                )
            )
            monkeypatch.undo()
        # These processes reduce only their own rows (a real jax run reduces
        # over every process inside the step): each counts the units of its
        # rows, and a share, `A` and `G` too, is a mean over them.
        assert shares[0][1] == shares[1][1] == 48 and whole[1] == 96
        for path, total in whole[0].items():
            np.testing.assert_allclose(
                (shares[0][0][path] + shares[1][0][path]) / 2,
                total,
                rtol=1e-5,
                atol=1e-7,
            )
        for path, (_, a, g, *_) in (whole[2] if len(whole) > 2 else {}).items():
            for i, total in ((1, a), (2, g)):
                np.testing.assert_allclose(
                    (shares[0][2][path][i] + shares[1][2][path][i]) / 2,
                    total,
                    rtol=1e-5,
                    atol=1e-7,
                )


_PROCESS = (
    """
import sys

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(
    coordinator_address=sys.argv[2],
    num_processes=2,
    process_id=int(sys.argv[1]),
)
"""
    + _COMMON
    + """
process = jax.process_index()
devices = keras.distribution.list_devices()
assert len(devices) == 4 and jax.process_count() == 2, devices
# Global batches of 32 rows: this process holds 16 of each, in order.
rows = np.concatenate(
    [np.arange(s + 16 * process, s + 16 * (process + 1)) for s in (0, 32)]
)
with keras.distribution.DataParallel(devices=devices).scope():
    model = make()
    memories = {
        run: keras_memgeom.FisherMemory.estimate(
            model,
            (x[rows], y[rows]),
            estimator=run[0],
            structure=run[1],
            batch_size=16,
        )
        for run in RUNS
    }
    # Three rows per process cannot be split over its two devices.
    try:
        keras_memgeom.FisherMemory.estimate(model, (x[:3], y[:3]))
    except ValueError as error:
        assert "does not split" in str(error), error
    else:
        raise AssertionError("an uneven batch was not refused")
for (estimator, structure), memory in memories.items():
    assert memory.num_examples == 64
    np.savez(f"{estimator}-{structure}-{process}.npz", *factors(memory))
print("ok")
"""
)


@pytest.mark.skipif(BACKEND != "jax", reason="jax.distributed runs on JAX")
def test_two_processes_estimate_the_memory_of_one(tmp_path):
    """Two jax processes (two CPU devices each) and one process agree."""
    import socket

    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        address = f"localhost:{probe.getsockname()[1]}"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["KERAS_BACKEND"] = "jax"
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    path = tmp_path / "process.py"
    path.write_text(_PROCESS)
    processes = [
        subprocess.Popen(
            [sys.executable, str(path), str(process), address],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for process in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in processes]
    for process, (out, err) in zip(processes, outputs):
        assert process.returncode == 0 and "ok" in out, err[-3000:]
    common = {}
    exec(_COMMON, common)
    single = common["make"]()
    for run in common["RUNS"]:
        alone = common["factors"](
            common["estimate"](single, (common["x"], common["y"]), run)
        )
        for process in range(2):
            saved = np.load(tmp_path / f"{run[0]}-{run[1]}-{process}.npz")
            spread = [saved[f"arr_{i}"] for i in range(len(alone))]
            assert common["relative"](alone, spread) < 1e-5, (run, process)


@pytest.mark.skipif(BACKEND != "torch", reason="torch's autograd graph")
def test_torch_totals_hold_no_autograd_graph():
    """Totals kept with their graph would hold every batch's activations."""
    from keras import ops

    from keras_memgeom import backend

    scale = keras.Variable(2.0)
    step = backend.batch_step(
        lambda values, x: ([ops.sum(ops.square(x) * values[0], axis=0)], []),
        [scale],
    )
    totals = None
    for _ in range(3):
        totals, _ = step(totals, (np.ones((4, 3), "float32"),))
    (total,) = backend.batch_total(totals)
    assert not total.requires_grad and total.grad_fn is None
    np.testing.assert_allclose(ops.convert_to_numpy(total), [24.0] * 3)
