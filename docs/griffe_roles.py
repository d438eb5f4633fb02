"""A griffe extension (mkdocs.yml: mkdocstrings' ``extensions``) for the API pages: the
docstrings' Sphinx roles, ``:func:`nfa``` and ``:class:`~agop_sweep.store.record.RunRecord```, as
code (`nfa`, `RunRecord`), which Markdown would otherwise show as ``:func:`` followed by code
(and Google-style sections would misread as a name before a colon)."""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|exc|obj):`(~?)([\w.]+)`")


def plain_roles(text: str) -> str:
    """``:role:`name``` as ``name`` in backticks; ``~a.b.c`` as ``c``."""
    return ROLE.sub(lambda m: f"`{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}`", text)


class PlainRoles(griffe.Extension):
    """Rewrites every docstring's roles as it is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = plain_roles(obj.docstring.value)
