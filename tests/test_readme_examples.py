"""The integration guide's examples run as written, in the real libraries
(docs/guides/integrations.md; they were the README's "In other flow libraries" section)."""

import re
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "guides" / "integrations.md"


def _examples():
    return re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)


def test_the_section_has_one_example_per_library():
    imports = [next(line for line in code.splitlines() if "inverseflow" in line)
               for code in _examples()]
    assert len(imports) == 3 and "integrations.normflows" in imports[2]


@pytest.mark.parametrize("index", range(3), ids=["torch.distributions", "pyro", "normflows"])
def test_readme_example_runs(index):
    exec(compile(_examples()[index], f"integration guide example {index}", "exec"), {})
