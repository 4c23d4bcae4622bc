"""Prints code from README.md, so that CI runs exactly what the README says.

Usage:
    python .ci/readme_command.py "Run the main job"   # the first ```bash block
                                                       # under "## Run the main
                                                       # job"
    python .ci/readme_command.py --python             # every ```python block,
                                                       # concatenated (one
                                                       # story)
"""

import os
import re
import sys

README = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md"
)


def section(text, title):
    """The text under the heading `## title`, up to the next `## ` heading."""
    match = re.search(
        rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S
    )
    if match is None:
        raise SystemExit(f"README.md has no section '## {title}'.")
    return match.group(1)


def blocks(text, language):
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.M | re.S)


def main(argv):
    with open(README) as f:
        text = f.read()
    if argv == ["--python"]:
        print("\n".join(blocks(text, "python")), end="")
        return
    if len(argv) != 1:
        raise SystemExit(__doc__)
    found = blocks(section(text, argv[0]), "bash")
    if not found:
        raise SystemExit(
            f"README.md has no ```bash block under '## {argv[0]}'."
        )
    print(found[0], end="")


if __name__ == "__main__":
    main(sys.argv[1:])
