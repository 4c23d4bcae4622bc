"""The output folder of a command: named, checked before any work."""

import datetime
import os

from keras_memgeom.src.cli.parser import usage_error
from keras_memgeom.src.utils.atomic_write import check_writable_file_path


def default_folder(parser, command):
    """`memgeom_runs/<command>-<time>`, creating `memgeom_runs`."""
    try:
        os.makedirs("memgeom_runs", exist_ok=True)
    except OSError as error:
        usage_error(
            parser,
            f"cannot create the folder 'memgeom_runs' for the results: {error}",
        )
    return os.path.join(
        "memgeom_runs",
        f"{command}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}",
    )


def check_folder(parser, out, flag):
    """Refuses an output folder that is a file, cannot be made or written.

    Returns:
        The absolute path of the folder (which may not exist yet).
    """
    folder = os.path.abspath(out)
    if os.path.exists(folder) and not os.path.isdir(folder):
        usage_error(parser, f"argument {flag}: {out!r} is a file, not a folder")
    parent = os.path.dirname(folder)
    if not os.path.isdir(folder) and not os.path.isdir(parent):
        what = "is a file" if os.path.exists(parent) else "does not exist"
        usage_error(
            parser,
            f"argument {flag}: cannot create {out!r}: its parent {parent!r} "
            f"{what}",
        )
    try:
        check_writable_file_path(
            os.path.join(
                folder if os.path.isdir(folder) else parent, "results.json"
            ),
            "results",
        )
    except OSError as error:
        usage_error(
            parser, f"argument {flag}: {out!r} is not writable: {error}"
        )
    return folder


def check_resume_folder(parser, args):
    """The folder of `--out`/`--resume`; refuses the two naming different ones.

    Returns:
        `(out, flag)`: the folder (`None` if neither is given) and the
        option that named it.
    """
    if args.resume is None:
        return args.out, "--out"
    if args.out is not None and os.path.abspath(args.out) != os.path.abspath(
        args.resume
    ):
        usage_error(
            parser,
            f"argument --resume: the run continues in {args.resume!r}, not "
            f"--out {args.out!r}",
        )
    return args.resume, "--resume"
