"""The CNN example runs every method through the harness, on tiny settings."""

import os
import runpy

EXAMPLE = os.path.join(
    os.path.dirname(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ),
    "examples",
    "continual_cnn_digits.py",
)


def test_every_method_runs_on_rotated_digits():
    example = runpy.run_path(EXAMPLE)  # Its globals; `main` does not run.
    document = example["run"](
        "rotated", num_tasks=2, epochs=1, seeds=2, max_examples=120
    )
    assert set(document["summary"]) == set(example["METHODS"])
    assert len(document["methods"]) == 2 * len(example["METHODS"])
    assert document["config"]["model"] == "cnn"
    assert example["make_tasks"]("permuted", 2)[1][0].shape == (1797, 8, 8, 1)
