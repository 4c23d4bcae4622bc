"""The memory the host can still give, for device-memory estimates on CPU."""

import os


def host_free_memory():
    """Bytes of host memory available to a new allocation, or `None`.

    Reads `MemAvailable` from `/proc/meminfo` (Linux), else the free
    physical pages.

    Returns:
        An int, or `None` where the system does not say.

    Example:

    ```python
    from keras_memgeom.src.utils.host_memory import host_free_memory

    print(host_free_memory())
    ```
    """
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
