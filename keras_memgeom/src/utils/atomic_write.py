"""Write a file so that readers see the old file or the whole new one."""

import contextlib
import glob
import os
import tempfile
import threading

_UMASK_LOCK = threading.Lock()


def _umask():
    # `os.umask` only reads by writing; the lock keeps threads from seeing 0.
    with _UMASK_LOCK:
        mask = os.umask(0)
        os.umask(mask)
    return mask


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temporaries(directory, name):
    # Temporaries of writers that were killed (SIGKILL, power loss) carry
    # their pid; those whose process is gone are removed.
    for stale in glob.glob(
        os.path.join(glob.escape(directory), f".{glob.escape(name)}.*.tmp")
    ):
        try:
            pid = int(os.path.basename(stale)[len(name) + 2 :].split(".", 1)[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            with contextlib.suppress(OSError):
                os.unlink(stale)


def check_writable_file_path(path, what="file"):
    """Checks that `path` names a file that can be written, before any work.

    Args:
        path: the destination.
        what: what the file is, for the error message.

    Returns:
        The absolute path.

    Raises:
        IsADirectoryError: if `path` is a folder.
        FileNotFoundError: if its folder does not exist.
        PermissionError: if its folder cannot be written.
    """
    path = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(path)
    if os.path.isdir(path):
        raise IsADirectoryError(
            f"Cannot write the {what} to {path!r}: it is a folder."
        )
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"Cannot write the {what} to {path!r}: the folder {directory!r} "
            "does not exist."
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        raise PermissionError(
            f"Cannot write the {what} to {path!r}: the folder {directory!r} is "
            "not writable."
        )
    return path


@contextlib.contextmanager
def atomic_write(path, what="file"):
    """Opens a temporary file beside `path`; renames it to `path` on success.

    The data and the folder entry are flushed to disk (`fsync`) before the
    rename, and the file gets the permissions the user's umask gives new
    files. On any failure (an exception, Ctrl-C) the temporary file is
    removed and `path` is left as it was; temporaries left by killed
    processes are removed by the next write to the same path.

    Args:
        path: the destination file.
        what: what the file is, for error messages.

    Yields:
        A binary file object.

    Raises:
        IsADirectoryError, FileNotFoundError, PermissionError: see
            `check_writable_file_path`.

    Example:
    >>> with atomic_write("results.json") as f:
    ...     f.write(b"{}")
    """
    path = check_writable_file_path(path, what)
    directory, name = os.path.split(path)
    _remove_stale_temporaries(directory, name)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{name}.{os.getpid()}.", suffix=".tmp", dir=directory
    )
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    directory_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)
