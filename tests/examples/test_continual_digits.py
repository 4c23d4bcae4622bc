"""End to end: a Fisher memory of task A prevents forgetting it on task B."""

import importlib.util
import os

EXAMPLE = os.path.join(
    os.path.dirname(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ),
    "examples",
    "continual_digits.py",
)


def _example():
    spec = importlib.util.spec_from_file_location("continual_digits", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_memory_keeps_task_a_at_least_15_points_above_finetuning():
    results = _example().run(epochs=8, strength=100.0, seed=0, batch_size=64)
    finetune_a, finetune_b = results["finetune"]
    memory_a, memory_b = results["memory"]
    assert memory_a >= finetune_a + 0.15, results
    assert memory_b >= 0.8, results  # and task B is still learned
