"""Checks of the documentation site that need no Sphinx (scripts/docs.sh builds the site):
every public name has a docstring and a place in the API reference, every layer, model
and transform names the paper it comes from, and the CLI reference, generated from the
argparse parser, lists every flag of every subcommand."""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
from pathlib import Path

import pytest

from inverseflow.cli import build_parser

DOCS = Path(__file__).resolve().parent.parent / "docs"

# Public module -> its API reference page. A module's public names are its ``__all__``.
PUBLIC_MODULES = {
    "inverseflow": "api/ops.md",
    "inverseflow.nn": "api/nn.md",
    "inverseflow.models": "api/models.md",
    "inverseflow.transforms": "api/transforms.md",
    "inverseflow.integrations.normflows": "api/integrations.md",
    "inverseflow.jit": "api/jit.md",
    "inverseflow.export": "api/export.md",
    "inverseflow.deblur": "api/deblur.md",
}
# nn.Module's repr hook: documented by torch, shown by repr(), not part of our API.
HOOKS = {"extra_repr"}
# A citation: a venue or arXiv with a year ("NeurIPS 2018", "AISTATS 2025", "ICML 2019").
CITATION = re.compile(r"\b(19|20)\d\d\b")


def _public_names():
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            yield module_name, name, getattr(module, name)


def _is_data(obj) -> bool:
    return not (inspect.isclass(obj) or callable(obj))


PUBLIC = list(_public_names())
IDS = [f"{m}.{n}" for m, n, _ in PUBLIC]


def _own_members(cls):
    """Public methods and properties that ``cls`` itself defines (not inherited)."""
    for name, member in vars(cls).items():
        if name.startswith("_") or name in HOOKS:
            continue
        function = member.__func__ if isinstance(member, (staticmethod, classmethod)) else member
        if inspect.isfunction(function) or isinstance(function, property):
            yield name, function


@pytest.mark.parametrize("module_name, name, obj", PUBLIC, ids=IDS)
def test_public_name_has_a_docstring(module_name, name, obj):
    if _is_data(obj):
        pytest.skip("data: described on its reference page (test_public_name_is_in_the_reference)")
    assert (obj.__doc__ or "").strip(), f"{module_name}.{name} has no docstring"
    if inspect.isclass(obj):
        missing = [m for m, f in _own_members(obj) if not (f.__doc__ or "").strip()]
        assert not missing, f"{module_name}.{name}: no docstring on {', '.join(missing)}"


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_public_module_has_a_docstring(module_name):
    assert (importlib.import_module(module_name).__doc__ or "").strip()


def _reference_text(page: str) -> str:
    return (DOCS / page).read_text()


@pytest.mark.parametrize("module_name, name, obj", PUBLIC, ids=IDS)
def test_public_name_is_in_the_reference(module_name, name, obj):
    text = _reference_text(PUBLIC_MODULES[module_name])
    # ``automodule`` with ``:members:`` documents exactly the module's ``__all__``.
    if re.search(rf"^\.\. automodule::\s+{re.escape(module_name)}\s*\n(   :.*\n)*   :members:\s*$",
                 text, flags=re.M):
        return
    # Else an autodoc (or data) directive naming it, through the public module or the
    # module that defines it (autodata reads a ``#:`` comment in the defining module).
    pattern = rf"^\.\. (auto)?(function|class|exception|data)::\s+{re.escape(module_name)}\.(\w+\.)*{name}\s*$"
    assert re.search(pattern, text, flags=re.M), \
        f"{module_name}.{name} is not documented in docs/{PUBLIC_MODULES[module_name]}"


def test_autodata_has_a_description():
    """autodata shows the ``#:`` comment above the assignment; without one it would show
    the docstring of dict or str."""
    for page in set(PUBLIC_MODULES.values()):
        for target in re.findall(r"^\.\. autodata::\s+(\S+)\s*$", _reference_text(page), flags=re.M):
            module_name, name = target.rsplit(".", 1)
            source = inspect.getsource(importlib.import_module(module_name))
            assert re.search(rf"^#:.*\n(#:.*\n)*{name}\s*=", source, flags=re.M), \
                f"{target}: no '#:' comment above its assignment"


@pytest.mark.parametrize("module_name, name, obj", [p for p in PUBLIC if inspect.isclass(p[2])
                                                    and not issubclass(p[2], BaseException)],
                         ids=[i for i, p in zip(IDS, PUBLIC) if inspect.isclass(p[2])
                              and not issubclass(p[2], BaseException)])
def test_layer_model_and_transform_classes_cite_their_paper(module_name, name, obj):
    if module_name in ("inverseflow.jit", "inverseflow.export"):
        pytest.skip("this package's own machinery, not a layer from a paper")
    assert CITATION.search(obj.__doc__ or ""), \
        f"{module_name}.{name}: the docstring names no paper (author, venue, year)"


# ---- the command-line reference ---------------------------------------------------------

def _cli_text():
    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        import cli_text
    finally:
        sys.path.remove(str(DOCS / "_ext"))
    return cli_text


def _subcommands(parser):
    """Walked here without the renderer's help, so that a renderer that skips some
    subcommands or arguments is caught."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    return found


SUBCOMMANDS = _subcommands(build_parser())


def test_cli_page_is_generated_from_the_parser():
    # Inside eval-rst: the directive emits reStructuredText, which MyST would read as Markdown.
    assert re.search(r"^\.\. inverseflow-cli::", (DOCS / "cli.md").read_text(), flags=re.M)
    assert '"cli_reference"' in (DOCS / "conf.py").read_text()


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_every_cli_flag_is_in_the_reference(command):
    rendered = "\n".join(_cli_text().render(build_parser()))
    section = rendered.split(f"\ninverseflow {command}\n", 1)
    assert len(section) == 2, f"no section for 'inverseflow {command}'"
    section = section[1].split("\ninverseflow ", 1)[0]
    missing = []
    for action in SUBCOMMANDS[command]._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        names = action.option_strings or [action.metavar or action.dest]
        missing += [n for n in names if not re.search(rf"``{re.escape(n)}[ `]", section)]
    assert not missing, f"inverseflow {command}: {', '.join(missing)} missing from the CLI reference"


def test_cli_reference_catches_a_missing_flag():
    """The check above fails when the renderer drops a flag (it is not vacuous)."""
    parser = build_parser()
    command = sorted(SUBCOMMANDS)[0]
    sub = _subcommands(parser)[command]
    sub.add_argument("--flag-the-renderer-never-saw", help="added after rendering")
    rendered = "\n".join(_cli_text().render(build_parser()))
    assert "--flag-the-renderer-never-saw" not in rendered
    assert "--flag-the-renderer-never-saw" in "\n".join(_cli_text().render(parser))
