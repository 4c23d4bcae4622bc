"""Writes docs/cli.md, the reference of the `memgeom` command, from its parser.

Every command and every option, with its type, default and help, as
`memgeom COMMAND --help` says them. Run it after changing an option:

    python docs/make_cli_reference.py

`tests/cli/test_cli_reference.py` checks that docs/cli.md is up to date.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_memgeom.src.cli.parser import build_parser  # noqa: E402

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cli.md")

_INTRO = """\
# The `memgeom` command

`memgeom` runs the continual-learning harness and the merge experiment
from the shell (`python -m keras_memgeom` does the same). A *method* is
the name of a registered strategy: `--methods` and the `"method"` entries
of `results.json` name strategies as
`keras_memgeom.continual.register_strategy` registered them (see the
[harness guide](harness.md)).

This page is generated from the command's parser by
`docs/make_cli_reference.py`; `memgeom COMMAND --help` says the same.
"""


def reference():
    """The text of docs/cli.md.

    Returns:
        A Markdown string.
    """
    parser = build_parser()
    (commands,) = [
        action
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
    ]
    helps = {choice.dest: choice.help for choice in commands._choices_actions}
    parts = [_INTRO, "```text\n" + parser.description.rstrip() + "\n```\n"]
    for name, command in commands.choices.items():
        parts.append(f"## memgeom {name}\n\n{_sentence(helps[name])}\n")
        if command.description:
            parts.append(_escape(command.description) + "\n")
        options = [
            action
            for action in command._actions
            if action.option_strings
            and action.help != argparse.SUPPRESS
            and not isinstance(action, argparse._HelpAction)
        ]
        if not options:
            parts.append("No options.\n")
            continue
        parts.append("\n".join(_option(action) for action in options) + "\n")
    return "\n".join(parts)


def _option(action):
    flags = ", ".join(f"`{flag}`" for flag in action.option_strings)
    return (
        f"- {flags}: {_type(action)}; default: {_default(action)}.\n"
        f"  {_escape(_sentence(action.help.replace('%%', '%')))}"
    )


def _type(action):
    if action.nargs == 0:
        return "a flag"
    if action.choices:
        return "one of " + ", ".join(f"`{c}`" for c in action.choices)
    if action.metavar and action.type is not None:
        return f"`{action.metavar}`"
    if action.type is None:
        return "text" if action.metavar is None else f"`{action.metavar}`"
    if action.type is int:
        return "an integer"
    return action.type.__doc__.splitlines()[0].rstrip(".").lower()


def _default(action):
    default = action.default
    if action.nargs == 0:
        return "off"
    if default is None or default == (None, {}):
        return "unset"
    if isinstance(default, list):
        return "`" + ",".join(f"{value:g}" for value in default) + "`"
    if isinstance(default, tuple):
        default, by_method = default
        return f"`{default:g}`" if not by_method else f"`{default}`"
    return f"`{default}`"


def _sentence(text):
    text = text[0].upper() + text[1:]
    return text if text.endswith(".") else text + "."


def _escape(text):
    """Markdown text: `<command>` would read as an HTML tag."""
    return text.replace("<", "&lt;").replace(">", "&gt;")


def main():
    with open(PATH, "w", encoding="utf-8") as handle:
        handle.write(reference())
    print(f"wrote {PATH}")


if __name__ == "__main__":
    main()
