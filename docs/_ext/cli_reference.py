"""Sphinx extension: the ``inverseflow-cli`` directive renders the command-line reference
from ``inverseflow.cli.build_parser()`` (see :mod:`cli_text`), so the page lists exactly
the flags the installed ``inverseflow`` accepts."""

from __future__ import annotations

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

import cli_text


class InverseflowCli(SphinxDirective):
    has_content = False

    def run(self) -> list[nodes.Node]:
        from inverseflow.cli import build_parser

        source = self.get_source_info()[0]
        content = StringList(cli_text.render(build_parser()), source=source)
        container = nodes.container()
        nested_parse_with_titles(self.state, content, container)
        return container.children


def setup(app):
    app.add_directive("inverseflow-cli", InverseflowCli)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
