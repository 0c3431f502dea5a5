"""Sphinx configuration of the inverseflow documentation (built by scripts/docs.sh).

Sphinx + furo, as zuko does: autodoc reads the same docstrings that ``help()`` shows, so
the API reference cannot drift from the code; MyST-NB executes the tutorials (MyST
Markdown notebooks) on every build, so a tutorial that stops running fails the build.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

project = "inverseflow"
author = "inverseflow developers"
copyright = "2026, inverseflow developers"

import inverseflow  # noqa: E402  (after sys.path: the docs document the installed package)

release = version = inverseflow.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "matplotlib.sphinxext.plot_directive",
    "myst_nb",
    "cli_reference",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb"}
exclude_patterns = ["_build", "screenshots", "results/**/*.md", "README.md"]
root_doc = "index"

# -- autodoc -----------------------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# No intersphinx: CI machines are offline, and a failed inventory fetch is a warning.

# -- MyST / MyST-NB (tutorials) ------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "force"          # every build runs every tutorial from scratch
nb_execution_timeout = 600           # per cell
nb_execution_raise_on_error = True   # a failing cell fails the build
nb_execution_show_tb = True
nb_merge_streams = True

# -- figures drawn by code (guides/design.md) -------------------------------------------
plot_basedir = str(HERE)           # {plot} figures/x.py, from any page
plot_html_show_source_link = False
plot_html_show_formats = False
plot_formats = [("png", 120)]
plot_include_source = False

# -- HTML ----------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"inverseflow {release}"
html_static_path: list[str] = []
