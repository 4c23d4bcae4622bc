"""`memgeom`'s entry point: parses the arguments once, runs the command."""

import sys

from keras_memgeom.src.cli.bench import run_bench
from keras_memgeom.src.cli.info import run_info
from keras_memgeom.src.cli.merge import run_merge
from keras_memgeom.src.cli.parser import build_parser
from keras_memgeom.src.utils.keras_backend import backend_choice

_COMMANDS = {
    "demo": run_bench,
    "bench": run_bench,
    "info": run_info,
    "merge": run_merge,
}


def main(argv=None):
    """Runs `memgeom`; returns the exit code (0 done, 2 bad usage).

    Args:
        argv: the arguments after the program name; `None` reads
            `sys.argv`.

    Returns:
        0 when the command finished, 1 when its results could not be
        written, 2 for bad usage (argparse exits with 2 itself), 130 when
        interrupted.

    Example:
    >>> main(["info"])
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command != "info":  # info prints it on stdout, with the rest
        print(f"memgeom: {backend_choice()}", file=sys.stderr, flush=True)
    return _COMMANDS[args.command](parser, args)


if __name__ == "__main__":
    sys.exit(main())
