"""The README's examples for other flow libraries run as written (in the real libraries)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _examples():
    text = README.read_text()
    section = text.split("## In other flow libraries", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_section_has_one_example_per_library():
    imports = [next(line for line in code.splitlines() if "inverseflow" in line)
               for code in _examples()]
    assert len(imports) == 3 and "integrations.normflows" in imports[2]


@pytest.mark.parametrize("index", range(3), ids=["torch.distributions", "pyro", "normflows"])
def test_readme_example_runs(index):
    exec(compile(_examples()[index], f"README example {index}", "exec"), {})
