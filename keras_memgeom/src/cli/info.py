"""`memgeom info`: the Keras backend, how it was chosen, versions, devices."""

import keras

from keras_memgeom import backend
from keras_memgeom.src.utils.keras_backend import backend_choice
from keras_memgeom.version import __version__


def run_info(parser, args):
    """Prints the backend and its choice, the versions and the devices.

    Args:
        parser, args: the `memgeom` parser and the parsed arguments (no
            option of its own).

    Returns:
        The exit code, 0.
    """
    print(f"memgeom: {backend_choice()}")
    print(f"keras_memgeom {__version__}, keras {keras.__version__}")
    print(backend.device_description())
    return 0
