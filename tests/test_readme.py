"""The README's examples run as written."""

import os
import re

README = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md"
)


def _python_blocks():
    with open(README) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), flags=re.DOTALL)


def test_readme_has_examples():
    assert len(_python_blocks()) >= 2


def test_readme_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {}
    # The blocks are one story: later ones use names from earlier ones.
    for block in _python_blocks():
        exec(compile(block, README, "exec"), namespace)
    assert "memory_penalty" in namespace["history"].history
    assert (tmp_path / "digits.memory").exists()


def test_readme_commands_name_existing_extras():
    with open(README) as f:
        text = f.read()
    with open(os.path.join(os.path.dirname(README), "pyproject.toml")) as f:
        pyproject = f.read()
    for extras in re.findall(r'-e "\.\[([^\]]+)\]"', text):
        for extra in extras.split(","):
            assert re.search(
                rf"^{re.escape(extra)} = \[", pyproject, flags=re.M
            ), extra
