import json
import os
import subprocess
import sys
import textwrap
import zipfile

import keras
import numpy as np
import pytest

from keras_memgeom import FisherMemory
from keras_memgeom.src.memory import memory_file
from tests.memory.helpers import classification_data
from tests.memory.helpers import softmax_regression

pytestmark = pytest.mark.usefixtures("full_precision")


def _memory_of(model, rng, n=50):
    x, y = classification_data(rng, num_examples=n)
    return FisherMemory.estimate(model, (x, y))


def test_penalty_equals_formula(rng):
    model = softmax_regression()
    memory = _memory_of(model, rng)
    new = [
        w + rng.normal(size=w.shape).astype("float32")
        for w in model.get_weights()
    ]
    model.set_weights(new)
    expected = sum(
        np.sum(memory.fisher[v.path] * (w - memory.anchor[v.path]) ** 2)
        for v, w in zip(model.trainable_variables, new)
    )
    expected *= 3.0 * 0.5 * memory.num_examples / 200
    got = float(
        keras.ops.convert_to_numpy(
            memory.penalty(model, num_train_examples=200, strength=3.0)
        )
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_penalty_is_zero_at_the_anchor(rng):
    model = softmax_regression()
    memory = _memory_of(model, rng)
    assert (
        float(
            keras.ops.convert_to_numpy(
                memory.penalty(model, num_train_examples=10)
            )
        )
        == 0.0
    )


def test_effective_dimension(rng):
    memory = FisherMemory(
        {"a": np.zeros(3), "b": np.zeros(2)},
        {"a": [1.0, 3.0, 0.0], "b": [0.5, 0.5]},
        2,
    )
    total, per_variable = memory.effective_dimension(2.0)
    np.testing.assert_allclose(per_variable["a"], 2 / 4 + 6 / 8 + 0.0)
    np.testing.assert_allclose(per_variable["b"], 2 * (1 / 3))
    np.testing.assert_allclose(total, per_variable["a"] + per_variable["b"])
    for prior_precision in (0.0, -1.0, float("nan"), float("inf"), "1"):
        with pytest.raises(ValueError, match="prior_precision"):
            memory.effective_dimension(prior_precision)


def test_invalid_memories_are_refused():
    with pytest.raises(ValueError, match="same variables"):
        FisherMemory({"a": np.zeros(2)}, {"b": np.zeros(2)}, 1)
    with pytest.raises(ValueError, match="shape"):
        FisherMemory({"a": np.zeros(2)}, {"a": np.zeros(3)}, 1)
    with pytest.raises(ValueError, match="NaN"):
        FisherMemory({"a": np.array([np.nan, 0.0])}, {"a": np.zeros(2)}, 1)
    with pytest.raises(ValueError, match="negative"):
        FisherMemory({"a": np.zeros(2)}, {"a": -np.ones(2)}, 1)
    for num_examples in (0, 2.5, "3"):
        with pytest.raises(ValueError, match="num_examples"):
            FisherMemory({"a": np.zeros(2)}, {"a": np.zeros(2)}, num_examples)


def test_memory_matches_a_rebuilt_model_by_order_and_shape(rng):
    memory = _memory_of(softmax_regression(), rng)
    keras.backend.clear_session()
    keras.layers.Dense(1)  # shifts the auto-numbered names
    rebuilt = softmax_regression()
    assert set(v.path for v in rebuilt.trainable_variables) != set(memory.paths)
    with pytest.warns(UserWarning, match="by order and shape"):
        pairs = memory.match(rebuilt)
    assert [v.path for _, v in pairs] == [
        v.path for v in rebuilt.trainable_variables
    ]


def test_memory_that_does_not_fit_names_the_variable(rng):
    memory = _memory_of(softmax_regression(), rng)
    with pytest.raises(ValueError, match="kernel.*shape"):
        memory.match(softmax_regression(num_features=6))
    deeper = keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(4), keras.layers.Dense(3)]
    )
    with pytest.raises(
        ValueError, match="is not among the model's trainable variables"
    ):
        memory.match(deeper)
    with pytest.raises(ValueError, match="num_train_examples"):
        memory.penalty(softmax_regression(), num_train_examples=0)


def test_save_and_load_round_trip(tmp_path, rng):
    model = softmax_regression()
    memory = _memory_of(model, rng)
    path = tmp_path / "a.memory"
    memory.save(path)
    loaded = FisherMemory.load(path)
    assert loaded.paths == memory.paths
    assert (
        loaded.num_examples == memory.num_examples
        and loaded.estimator == "exact"
    )
    for p in memory.paths:
        np.testing.assert_array_equal(loaded.anchor[p], memory.anchor[p])
        np.testing.assert_array_equal(loaded.fisher[p], memory.fisher[p])
    assert [n for n in os.listdir(tmp_path)] == [
        "a.memory"
    ]  # no temporary left


def test_corrupt_truncated_and_newer_files_are_refused(tmp_path, rng):
    memory = _memory_of(softmax_regression(), rng)
    path = tmp_path / "a.memory"
    memory.save(path)
    raw = path.read_bytes()

    truncated = tmp_path / "truncated.memory"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        FisherMemory.load(truncated)

    garbage = tmp_path / "garbage.memory"
    garbage.write_bytes(b"not a memory at all")
    with pytest.raises(ValueError, match="corrupt or truncated"):
        FisherMemory.load(garbage)

    tampered = tmp_path / "tampered.memory"
    with (
        zipfile.ZipFile(path) as source,
        zipfile.ZipFile(tampered, "w") as target,
    ):
        for item in source.namelist():
            data = source.read(item)
            if item == "fisher/0.npy":
                data = data[:-4] + b"\x00\x00\x80\x3f"
            target.writestr(item, data)
    with pytest.raises(ValueError, match="checksum"):
        FisherMemory.load(tampered)

    newer = tmp_path / "newer.memory"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(newer, "w") as target:
        for item in source.namelist():
            data = source.read(item)
            if item == "meta.json":
                meta = json.loads(data)
                meta["version"] = memory_file.FORMAT_VERSION + 1
                data = json.dumps(meta)
            target.writestr(item, data)
    with pytest.raises(
        ValueError, match=f"version {memory_file.FORMAT_VERSION + 1}"
    ):
        FisherMemory.load(newer)
    with pytest.raises(FileNotFoundError):
        FisherMemory.load(tmp_path / "missing.memory")


def test_a_failed_save_leaves_the_old_file_intact(tmp_path, rng, monkeypatch):
    memory = _memory_of(softmax_regression(), rng)
    path = tmp_path / "a.memory"
    memory.save(path)
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(memory_file.np, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        memory.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["a.memory"]


def test_memory_and_fisher_agree_across_backends(tmp_path, rng, other_backends):
    """A memory saved here gives the same penalty elsewhere, and every
    backend estimates the same Fisher from the same weights and data."""
    x, y = classification_data(rng, num_examples=50)
    model = softmax_regression()
    memory = FisherMemory.estimate(model, (x, y))
    weights = [w + 0.1 for w in model.get_weights()]
    model.set_weights(weights)
    expected = float(
        keras.ops.convert_to_numpy(
            memory.penalty(model, num_train_examples=30, strength=2.0)
        )
    )
    memory.save(tmp_path / "a.memory")
    np.savez(
        tmp_path / "data.npz", x=x, y=y, kernel=weights[0], bias=weights[1]
    )
    script = textwrap.dedent(
        f"""
        import warnings
        import numpy as np, keras
        from keras_memgeom import FisherMemory
        from tests.memory.helpers import softmax_regression
        warnings.simplefilter("ignore")
        memory = FisherMemory.load({str(tmp_path / "a.memory")!r})
        data = np.load({str(tmp_path / "data.npz")!r})
        model = softmax_regression()
        model.set_weights([data["kernel"], data["bias"]])
        penalty = memory.penalty(model, num_train_examples=30, strength=2.0)
        print(float(keras.ops.convert_to_numpy(penalty)))
        model.set_weights([data["kernel"] - 0.1, data["bias"] - 0.1])
        fisher = FisherMemory.estimate(model, (data["x"], data["y"])).fisher
        values = np.concatenate([a.ravel() for a in fisher.values()])
        print(" ".join(str(v) for v in values))
        """
    )
    here = np.concatenate([a.ravel() for a in memory.fisher.values()])
    for backend in other_backends:
        env = dict(os.environ, KERAS_BACKEND=backend)
        out = subprocess.run(
            [sys.executable, "-c", script],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
        )
        penalty, fisher = out.stdout.strip().splitlines()[-2:]
        np.testing.assert_allclose(float(penalty), expected, rtol=1e-5)
        np.testing.assert_allclose(
            np.array(fisher.split(), dtype="float64"), here, rtol=1e-5
        )
