"""Running `memgeom` in the test process, and the settings of a tiny run."""

from keras_memgeom.src.cli.main import main

TINY = [
    "--tasks",
    "2",
    "--width",
    "8",
    "--epochs",
    "1",
    "--train-examples",
    "150",
    "--quiet",
]


def run_cli(args, capsys):
    """`(exit code, stdout, stderr)` of `memgeom args`."""
    try:
        code = main(args)
    except SystemExit as exit:
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err
