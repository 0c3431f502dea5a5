"""The command-line reference as reStructuredText, walked from the argparse parser.

Pure Python (no Sphinx import), so that ``tests/test_docs.py`` can check, without Sphinx,
that every flag of every subcommand reaches the page; :mod:`cli_reference` renders it into
the site. Since the page is generated from ``inverseflow.cli.build_parser()`` at build time,
it cannot drift from the code.
"""

from __future__ import annotations

import argparse
import re


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser's subcommands by name (in the order they were added)."""
    out: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            out.update(action.choices)
    return out


def subcommand_help(parser: argparse.ArgumentParser) -> dict[str, str]:
    """The one-line help of each subcommand, as ``inverseflow -h`` lists it."""
    out: dict[str, str] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            out.update({choice.dest: choice.help or "" for choice in action._choices_actions})
    return out


def documented_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The arguments a user can give (everything but ``-h`` and the subcommand slot)."""
    return [a for a in parser._actions
            if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
            and a.help is not argparse.SUPPRESS]


def _literal(text: str) -> str:
    return f"``{text}``"


def _escape(text: str) -> str:
    # Help strings are plain text: keep reST markup characters literal.
    return text.replace("\\", "\\\\").replace("*", "\\*").replace("`", "\\`").replace("|", "\\|")


# A flag named in prose ("except --checkpoint-every"): not inside a word ("2-D", "x-axis").
_FLAG = re.compile(r"(?<![\w-])--?[A-Za-z][\w-]*")


def _prose(text: str) -> str:
    """Plain help text as reST: markup characters kept literal, and every flag it names
    set as a literal, so that the site's smart quotes cannot turn ``--device`` into an
    en-dash and "device" (a flag that search and copy would then miss). The escaped
    spaces around a literal let it touch any neighbour ("(--x", "--x's")."""
    text = _FLAG.sub(lambda flag: f"\\ {_literal(flag.group())}\\ ", _escape(text.strip()))
    return text.removesuffix("\\ ")


def _signature(action: argparse.Action) -> str:
    if not action.option_strings:
        return _literal(action.metavar or action.dest)
    if action.nargs == 0:
        return ", ".join(_literal(flag) for flag in action.option_strings)
    if isinstance(action.metavar, tuple):
        value = " ".join(action.metavar)
    else:
        value = action.metavar or action.dest.upper()
    if action.nargs not in (None, 1) and not isinstance(action.metavar, tuple):
        value = f"{value} ..."
    return ", ".join(_literal(f"{flag} {value}") for flag in action.option_strings)


def _sentence(text: str) -> str:
    text = text.strip()
    return text if not text or text[-1] in ".!?)" else text + "."


def _details(parser: argparse.ArgumentParser, action: argparse.Action,
             exclusive: dict[int, list[str]]) -> str:
    # The formatter expands %(default)s and friends exactly as `-h` shows them.
    help_text = parser._get_formatter()._expand_help(action) if action.help else ""
    parts = [_sentence(_prose(help_text))] if help_text else []
    if action.choices is not None:
        parts.append("One of " + ", ".join(_literal(str(c)) for c in action.choices) + ".")
    if action.required:
        parts.append("Required.")
    if action.nargs != 0 and action.default not in (None, argparse.SUPPRESS):
        parts.append(f"Default: {_literal(str(action.default))}.")
    others = exclusive.get(id(action))
    if others:
        parts.append("Not together with " + ", ".join(_literal(o) for o in others) + ".")
    return " ".join(parts) or "(no help text)"


def _exclusive_partners(parser: argparse.ArgumentParser) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for group in parser._mutually_exclusive_groups:
        for action in group._group_actions:
            out[id(action)] = [a.option_strings[0] for a in group._group_actions
                               if a is not action and a.option_strings]
    return out


def render(parser: argparse.ArgumentParser) -> list[str]:
    """reST lines: one section per subcommand with its usage and every argument."""
    prog = parser.prog
    lines = [_prose(parser.description or ""), "", ".. code-block:: text", ""]
    lines += ["   " + line for line in parser.format_usage().strip().splitlines()]
    lines.append("")
    helps = subcommand_help(parser)
    for name, sub in subcommands(parser).items():
        title = f"{prog} {name}"
        lines += [title, "-" * len(title), "", _sentence(_prose(helps.get(name, ""))), "",
                  ".. code-block:: text", ""]
        lines += ["   " + line for line in sub.format_usage().strip().splitlines()]
        lines.append("")
        exclusive = _exclusive_partners(sub)
        for action in documented_actions(sub):
            lines += [_signature(action), "   " + _details(sub, action, exclusive), ""]
    return lines


def documented_flags(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """Every subcommand's option strings and positional names, for the docs test."""
    return {name: [flag for action in documented_actions(sub)
                   for flag in (action.option_strings or [action.metavar or action.dest])]
            for name, sub in subcommands(parser).items()}
