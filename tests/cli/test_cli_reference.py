"""docs/cli.md is what docs/make_cli_reference.py makes of the parser now."""

import argparse
import importlib.util
import os

from keras_memgeom.src.cli.parser import build_parser

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)


def _make_cli_reference():
    path = os.path.join(ROOT, "docs", "make_cli_reference.py")
    spec = importlib.util.spec_from_file_location("make_cli_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_cli_md_is_up_to_date():
    with open(os.path.join(ROOT, "docs", "cli.md"), encoding="utf-8") as f:
        written = f.read()
    assert written == _make_cli_reference().reference(), (
        "docs/cli.md is stale: run python docs/make_cli_reference.py"
    )


def test_the_reference_names_every_command_and_option():
    text = _make_cli_reference().reference()
    parser = build_parser()
    (commands,) = [
        a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
    ]
    for name, command in commands.choices.items():
        assert f"## memgeom {name}\n" in text
        section = text.split(f"## memgeom {name}\n")[1].split("\n## ")[0]
        for action in command._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}`" in section, (name, flag)
