"""griffe extensions for the API reference. The package's docstrings follow Sphinx's
conventions; the reference renders them as Markdown, and documents what a signature
alone would hide. Docstrings in the source stay as they are.

:class:`SphinxRoles`: each role (:class:`~sessionstore.SessionStore`, :meth:`add_turn`)
becomes an optional cross-reference (a link where the target is on the site, plain code
where it is not, and never a warning); a ``::`` that opens a literal block becomes ``:``
(the indented block after it is a Markdown code block already); ``#:`` comments above an
attribute become its docstring; an instance attribute's value (an expression of the
constructor's private state) is not shown.

:class:`KeywordOptions`: a method taking ``**options: Unpack[SomeOptions]`` gets a
"Keyword options" section listing every key of the ``TypedDict`` (its own and its bases'),
each with its type and the docstring written under it in the ``TypedDict``: the options
are documented once, where they are declared, and shown with every method taking them.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|meth|func|attr|data|exc|mod|obj):`(?P<tilde>~?)(?P<target>[^`]+)`")
LITERAL = re.compile(r"(?m)(?<=\S)::$|^[ \t]*::[ \t]*\n")
COMMENT = re.compile(r"^\s*#:\s?(?P<text>.*)$")


def _identifier(obj: griffe.Object, target: str) -> str:
    """The full path ``target`` names as seen from ``obj`` (best effort)."""
    target = target.removesuffix("()")
    if target.startswith("sessionstore."):
        return target
    head, _, rest = target.partition(".")
    # A class's members include what it inherits: ``:meth:`add_turn``` in a method of
    # SessionStore is SessionStore.add_turn, not a function of that name its module imports.
    scope: griffe.Object | None = obj
    while scope is not None:
        if scope.is_class and head in scope.all_members:
            return f"{scope.path}.{target}"
        scope = scope.parent
    scope = obj
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


def _comment_docstring(obj: griffe.Object) -> None:
    """Give an attribute documented by ``#:`` comment lines above it that docstring."""
    if not obj.is_attribute or obj.docstring is not None or obj.lineno is None:
        return
    try:
        lines = obj.lines_collection[obj.filepath]  # type: ignore[index]
    except (KeyError, TypeError):  # no source at hand (a compiled or inspected module)
        return
    found: list[str] = []
    number = obj.lineno - 1  # the line above the attribute, 1-based
    while number >= 1 and (match := COMMENT.match(lines[number - 1])):
        found.insert(0, match["text"])
        number -= 1
    if found:
        obj.docstring = griffe.Docstring("\n".join(found), lineno=number + 1, parent=obj)


class SphinxRoles(griffe.Extension):
    """Rewrite every docstring of the loaded package once it is complete."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        seen: set[int] = set()
        self._walk(pkg, seen)

    def _walk(self, obj: griffe.Object, seen: set[int]) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        _comment_docstring(obj)
        if obj.is_attribute and "instance-attribute" in obj.labels:
            obj.value = None  # type: ignore[attr-defined]
        if obj.docstring is not None:
            text = LITERAL.sub(lambda m: ":" if m.group(0) == "::" else "", obj.docstring.value)
            obj.docstring.value = ROLE.sub(lambda m: _render(obj, m), text)
        for member in obj.members.values():
            if not member.is_alias:
                self._walk(member, seen)  # type: ignore[arg-type]


def unpacked_options(function: griffe.Function) -> griffe.Class | None:
    """The ``TypedDict`` of ``function``'s ``**name: Unpack[TypedDict]``, if it has one."""
    for parameter in function.parameters:
        annotation = parameter.annotation
        if (
            parameter.kind is griffe.ParameterKind.var_keyword
            and isinstance(annotation, griffe.ExprSubscript)
            and str(annotation.left) == "Unpack"
        ):
            path = getattr(annotation.slice, "canonical_path", None)
            try:
                found = function.modules_collection[path] if path else None
            except KeyError:
                return None
            return found if isinstance(found, griffe.Class) else None
    return None


def option_fields(options: griffe.Class) -> list[griffe.Attribute]:
    """The keys of ``options``, its own first, then each base's (nearest first)."""
    fields: dict[str, griffe.Attribute] = {}
    for cls in (options, *options.mro()):
        for name, member in cls.members.items():
            if isinstance(member, griffe.Attribute) and name not in fields:
                fields[name] = member
    return list(fields.values())


class KeywordOptions(griffe.Extension):
    """Add the "Keyword options" section to every method taking ``Unpack[TypedDict]``."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self._walk(pkg, set())

    def _walk(self, obj: griffe.Object, seen: set[int]) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, griffe.Function) and obj.docstring is not None:
            options = unpacked_options(obj)
            if options is not None:
                self._document(obj.docstring, options)
        for member in obj.members.values():
            if not member.is_alias:
                self._walk(member, seen)  # type: ignore[arg-type]

    @staticmethod
    def _document(docstring: griffe.Docstring, options: griffe.Class) -> None:
        rows = [
            griffe.DocstringParameter(
                field.name,
                annotation=field.annotation,
                description=field.docstring.value if field.docstring else "",
            )
            for field in option_fields(options)
        ]
        section = griffe.DocstringSectionOtherParameters(rows, title="Keyword options:")
        docstring.parsed.append(section)
