"""Memories beyond one device: streamed estimation and simulated devices.

Prints, each figure from its own subprocess:

- the peak host memory (max RSS) of estimating a Fisher from a generator of
  N and of 8N examples (batches made on the fly, `max_examples=` set): it
  must not grow with N;
- on JAX, the throughput (examples per second) of Fisher estimation and of
  a `fit` epoch with a memory attached, on 1 and on 4 simulated CPU devices
  under `keras.distribution.DataParallel`. Simulated devices share the same
  cores, so this shows that the work is split and reduced correctly, not a
  speed-up.

Run: `KERAS_BACKEND=jax python benchmarks/distributed_memory.py [--examples 8192]`.
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

model = keras_memgeom.Sequential([keras.Input((784,)), keras.layers.Dense(256, activation="relu"),
                                  keras.layers.Dense(10)])
model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

def batches():
    rng = np.random.default_rng(0)
    while True:
        yield rng.uniform(size=(256, 784)).astype("float32"), rng.integers(0, 10, 256)

before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
keras_memgeom.FisherMemory.estimate(model, batches(), max_examples={n})
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"before_mib": before / 1024, "peak_mib": after / 1024}}))
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
with keras.distribution.DataParallel(devices=keras.distribution.list_devices()).scope():
    model = keras_memgeom.Sequential([keras.Input((784,)), keras.layers.Dense(256, activation="relu"),
                                      keras.layers.Dense(10)])
    model.compile("sgd", loss)
    keras_memgeom.FisherMemory.estimate(model, (x, y))  # compile
    start = time.perf_counter()
    memory = keras_memgeom.FisherMemory.estimate(model, (x, y))
    estimate = time.perf_counter() - start
    model.compile("sgd", loss, regularizers=[memory])
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
            f"streamed estimate of {n} examples: peak RSS {figures['peak_mib']:.0f} MiB "
            f"(after imports {figures['before_mib']:.0f} MiB)"
        )
    if os.environ.get("KERAS_BACKEND", "jax") != "jax":
        print("simulated devices: JAX only (keras.distribution)")
        return
    for devices in (1, 4):
        flags = f"--xla_force_host_platform_device_count={devices}"
        figures = _run(_DEVICES.format(n=args.examples), {"XLA_FLAGS": flags})
        print(
            f"{devices} simulated device(s): estimation {figures['estimate']:.0f} examples/s, "
            f"fit with a memory {figures['fit']:.0f} examples/s"
        )


if __name__ == "__main__":
    main()
