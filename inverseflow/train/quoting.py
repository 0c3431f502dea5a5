"""Quoting values from files in error messages, at a bounded cost.

``repr`` of a value read from a checkpoint can take forever (a list nested from shared
references has billions of leaves in a few hundred bytes) or fail (an int of more than 4300
digits); :func:`quote` looks at a few items of a few levels and caps the text.
"""

from __future__ import annotations

import reprlib


class _BoundedRepr(reprlib.Repr):
    def __init__(self):
        super().__init__()
        self.maxlevel = 3
        self.maxtuple = self.maxlist = self.maxdict = self.maxset = self.maxfrozenset = 6
        self.maxstring = self.maxother = 80
        self.maxlong = 40

    def repr_int(self, x, level):
        if x.bit_length() > 128:
            return f"<a {x.bit_length()}-bit integer>"
        return super().repr_int(x, level)


_REPR = _BoundedRepr()
MAX_QUOTE = 200


def quote(value, limit: int = MAX_QUOTE) -> str:
    """A short ``repr`` of ``value``: at most a few items per level, ``limit`` characters."""
    try:
        text = _REPR.repr(value)
    except Exception:   # a foreign object whose repr fails
        text = f"<a {type(value).__name__}>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def clip(text: str, limit: int = MAX_QUOTE) -> str:
    """``text`` (an exception's message, say) cut to ``limit`` characters."""
    text = str(text)
    return text if len(text) <= limit else text[:limit - 3] + "..."
