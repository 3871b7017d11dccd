"""A griffe extension for the API reference: the package's docstrings are written with
Sphinx roles (:class:`~sessionstore.SessionStore`, :meth:`add_turn`) and reST literal
blocks (``::``); the reference renders them as Markdown. Each role becomes an optional
cross-reference (a link where the target is on the site, plain code where it is not, and
never a warning), and a ``::`` that opens a literal block becomes ``:`` (the indented block
after it is a Markdown code block already). Docstrings in the source stay as they are.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|meth|func|attr|data|exc|mod|obj):`(?P<tilde>~?)(?P<target>[^`]+)`")
LITERAL = re.compile(r"(?m)(?<=\S)::$|^[ \t]*::[ \t]*\n")


def _identifier(obj: griffe.Object, target: str) -> str:
    """The full path ``target`` names as seen from ``obj`` (best effort)."""
    target = target.removesuffix("()")
    if target.startswith("sessionstore."):
        return target
    head, _, rest = target.partition(".")
    scope: griffe.Object | None = obj
    while scope is not None:
        try:
            found = scope.resolve(head)
        except Exception:  # best effort: a name griffe cannot resolve stays as written
            found = None
        if found:
            return f"{found}.{rest}" if rest else found
        scope = scope.parent
    return target


def _render(obj: griffe.Object, match: re.Match[str]) -> str:
    target = match["target"]
    title = target.removesuffix("()").rpartition(".")[2] if match["tilde"] else target
    ident = html.escape(_identifier(obj, target), quote=True)
    return f'<autoref identifier="{ident}" optional><code>{html.escape(title)}</code></autoref>'


class SphinxRoles(griffe.Extension):
    """Rewrite every docstring of the loaded package once it is complete."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        seen: set[int] = set()
        self._walk(pkg, seen)

    def _walk(self, obj: griffe.Object, seen: set[int]) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if obj.docstring is not None:
            text = LITERAL.sub(lambda m: ":" if m.group(0) == "::" else "", obj.docstring.value)
            obj.docstring.value = ROLE.sub(lambda m: _render(obj, m), text)
        for member in obj.members.values():
            if not member.is_alias:
                self._walk(member, seen)  # type: ignore[arg-type]
