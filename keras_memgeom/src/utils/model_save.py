"""`model.save` for models with memories: the old file or the whole new one."""

import os

import keras
from keras.src.saving import saving_lib
from keras.src.utils import file_utils
from keras.src.utils import io_utils

from keras_memgeom.src.utils.atomic_write import atomic_write


def save_model(model, filepath, overwrite=True, zipped=None, **kwargs):
    """Saves `model` as `keras.Model.save` does; a local `.keras` atomically.

    Keras writes a `.keras` archive straight into `filepath`, so a save that
    fails midway leaves a truncated file where the last good one was. Here
    the archive goes to a temporary file beside it, renamed over `filepath`
    only once complete (`atomic_write`). Other destinations (a folder with
    `zipped=False`, a remote path, the legacy `.h5`) go to Keras unchanged.

    Args:
        model: the Keras model.
        filepath: the destination.
        overwrite: whether to replace an existing file without asking.
        zipped: as `keras.Model.save`.
        **kwargs: as `keras.Model.save`.

    Returns:
        None.

    Raises:
        IsADirectoryError, FileNotFoundError, PermissionError: if
            `filepath` cannot be written (see `atomic_write`).
    """
    if isinstance(filepath, (str, os.PathLike)) and not kwargs:
        path = os.fspath(filepath)
        if (
            zipped in (None, True)
            and path.endswith(".keras")
            and not file_utils.is_remote_path(path)
        ):
            if (
                os.path.exists(path)
                and not overwrite
                and not io_utils.ask_to_proceed_with_overwrite(path)
            ):
                return
            with atomic_write(path, "model") as f:
                saving_lib.save_model(model, f)
            return
    keras.Model.save(
        model, filepath, overwrite=overwrite, zipped=zipped, **kwargs
    )
