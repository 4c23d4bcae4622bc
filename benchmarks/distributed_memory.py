"""Memories beyond one device: streamed estimation and simulated devices.

Prints, each figure from its own subprocess:

- the peak host memory (max RSS) of estimating a Fisher from a generator of
  N and of 8N examples (batches made on the fly, `max_examples=` set): it
  must not grow with N;
- the same through the harness's `tfds:` loader (`tfds:mnist` under
  `tfds.testing.mock_data`, which makes N random examples on the fly): a
  permuted task is built as a `tf.data` pipeline, one epoch of `fit`, the
  Fisher and the test accuracy read it batch by batch;
- the throughput (examples per second) of Fisher estimation and of a `fit`
  epoch with a memory attached: on JAX on 1 and 4 simulated CPU devices
  under `keras.distribution.DataParallel`, and on TensorFlow on 1 and 2
  logical CPU devices under `tf.distribute.MirroredStrategy`. Simulated
  devices share the same cores, so this shows that the work is split and
  reduced correctly, not a speed-up.

Run: `KERAS_BACKEND=jax python benchmarks/distributed_memory.py
[--examples 8192]`.
"""

import argparse
import json
import os
import subprocess
import sys
import textwrap

from _environment import print_environment

_STREAM = """
import json, resource
import numpy as np
import keras
import keras_memgeom

model = keras_memgeom.Sequential(
    [
        keras.Input((784,)),
        keras.layers.Dense(256, activation="relu"),
        keras.layers.Dense(10),
    ]
)
model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

def batches():
    rng = np.random.default_rng(0)
    while True:
        x = rng.uniform(size=(256, 784)).astype("float32")
        yield x, rng.integers(0, 10, 256)

before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
keras_memgeom.FisherMemory.estimate(model, batches(), max_examples={n})
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"before_mib": before / 1024, "peak_mib": after / 1024}}))
"""

_HARNESS = """
import json, resource
import keras
import tensorflow_datasets as tfds
import keras_memgeom
from keras_memgeom import continual
from keras_memgeom.src.continual.task_stream import batched

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

with tfds.testing.mock_data(num_examples={n}):
    data = continual.ImageDataset.load("tfds:mnist")
    stream = continual.TaskStream.make(
        "permuted", data, num_tasks=2, validation_split=0.0
    )
    task = stream.tasks[1]
    harness = continual.Harness(stream, width=256, epochs=1, batch_size=256)
    model = harness.build_model(continual.Finetune())
    model.compile("adam", LOSS)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    train = task.data("train")
    model.fit(batched(train, 256, shuffle=True), epochs=1, verbose=0)
    memory = keras_memgeom.FisherMemory.estimate(model, batched(train, 256))
    accuracy = harness._accuracy(model, task, "test")
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
assert memory.num_examples == {n}
print(json.dumps({{"before_mib": before / 1024, "peak_mib": after / 1024}}))
"""

_MIRRORED = """
import json, time
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * {devices}
)
import keras
import keras_memgeom

rng = np.random.default_rng(0)
x = rng.uniform(size=({n}, 784)).astype("float32")
y = rng.integers(0, 10, {n})
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
strategy = tf.distribute.MirroredStrategy(
    [f"/cpu:{{i}}" for i in range({devices})]
)
with strategy.scope():
    model = keras_memgeom.Sequential(
        [
            keras.Input((784,)),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    model.compile("sgd", loss)
    keras_memgeom.FisherMemory.estimate(model, (x, y))  # trace
    start = time.perf_counter()
    memory = keras_memgeom.FisherMemory.estimate(model, (x, y))
    estimate = time.perf_counter() - start
    model.compile("sgd", loss, memories=[memory])
    model.fit(x, y, batch_size=256, epochs=1, verbose=0)  # trace
    start = time.perf_counter()
    model.fit(x, y, batch_size=256, epochs=1, verbose=0)
    fit = time.perf_counter() - start
print(json.dumps({{"estimate": {n} / estimate, "fit": {n} / fit}}))
"""

_DEVICES = """
import json, time
import numpy as np
import keras
import keras_memgeom

rng = np.random.default_rng(0)
x = rng.uniform(size=({n}, 784)).astype("float32")
y = rng.integers(0, 10, {n})
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
devices = keras.distribution.list_devices()
with keras.distribution.DataParallel(devices=devices).scope():
    model = keras_memgeom.Sequential(
        [
            keras.Input((784,)),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    model.compile("sgd", loss)
    keras_memgeom.FisherMemory.estimate(model, (x, y))  # compile
    start = time.perf_counter()
    memory = keras_memgeom.FisherMemory.estimate(model, (x, y))
    estimate = time.perf_counter() - start
    model.compile("sgd", loss, memories=[memory])
    model.fit(x, y, batch_size=256, epochs=1, verbose=0)  # compile
    start = time.perf_counter()
    model.fit(x, y, batch_size=256, epochs=1, verbose=0)
    fit = time.perf_counter() - start
print(json.dumps({{"estimate": {n} / estimate, "fit": {n} / fit}}))
"""


def _run(code, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode:
        raise RuntimeError(result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    print_environment()
    parser = argparse.ArgumentParser(
        description="Streamed and multi-device memories."
    )
    parser.add_argument("--examples", type=int, default=8192)
    args = parser.parse_args()
    for n in (args.examples, 8 * args.examples):
        figures = _run(_STREAM.format(n=n))
        print(
            f"streamed estimate of {n} examples: peak RSS "
            f"{figures['peak_mib']:.0f} MiB (after imports "
            f"{figures['before_mib']:.0f} MiB)"
        )
    for n in (args.examples, 8 * args.examples):
        figures = _run(_HARNESS.format(n=n))
        print(
            f"tfds: loader, fit + Fisher + evaluation of {n} examples: peak "
            f"RSS {figures['peak_mib']:.0f} MiB (after the model "
            f"{figures['before_mib']:.0f} MiB)"
        )
    for devices in (1, 4):
        flags = f"--xla_force_host_platform_device_count={devices}"
        figures = _run(
            _DEVICES.format(n=args.examples),
            {"KERAS_BACKEND": "jax", "XLA_FLAGS": flags},
        )
        print(
            f"jax, {devices} simulated device(s): estimation "
            f"{figures['estimate']:.0f} examples/s, fit with a memory "
            f"{figures['fit']:.0f} examples/s"
        )
    for devices in (1, 2):
        figures = _run(
            _MIRRORED.format(n=args.examples, devices=devices),
            {"KERAS_BACKEND": "tensorflow"},
        )
        print(
            f"tensorflow MirroredStrategy, {devices} logical CPU(s): "
            f"estimation {figures['estimate']:.0f} examples/s, fit with a "
            f"memory {figures['fit']:.0f} examples/s"
        )


if __name__ == "__main__":
    main()
