"""Where a benchmark runs, printed first so that every figure says so.

Imported by the scripts next to it (`python benchmarks/NAME.py` puts this
folder on `sys.path`).
"""

from keras_memgeom import backend
from keras_memgeom.src.utils.keras_backend import backend_choice


def print_environment():
    """Prints the Keras backend, how it was chosen, and the devices it uses.

    Example:
    >>> print_environment()
    # Keras backend jax (from KERAS_BACKEND); jax 0.4.30 on cpu: cpu:0
    """
    print(f"# {backend_choice()}; {backend.device_description()}", flush=True)
