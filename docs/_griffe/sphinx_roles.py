"""A griffe extension for the API pages: the package's numpydoc docstrings, rendered cleanly.

The docstrings are written for ``help()`` and Sphinx, so they cross-reference with Sphinx roles
(``:class:`~mwnet_sk.augment.BatchAugment```, ``:meth:`fit```). mkdocstrings renders Markdown,
where such a role would show as text. This extension rewrites every role of the package's
docstrings, once griffe has loaded the package, into a cross-reference of mkdocs-autorefs:

* the target is resolved like Python resolves a name in the docstring's scope (``fit`` in a
  class docstring is that class's method; ``TrainingDivergedError`` in a module is what that
  module imports), and a leading ``~`` shows the last component only, as in Sphinx;
* the reference is *optional*: a target that no page documents (a torch class, a private
  helper) renders as code instead of failing the strict build.

It also reads the numpydoc form ``type : description`` on the first line of a property's
docstring into the property's type, so the page shows the description without the type prefix,
and takes each documented parameter's default from the signature when the signature has one: a
numpydoc line that documents several parameters at once (``f_params, f_optimizer : str``) would
otherwise show the first one's default for all of them.

Enabled in ``mkdocs.yml`` under the python handler's ``extensions``.
"""

from __future__ import annotations

import html
import re

import griffe

_ROLE = re.compile(r":(?:py:)?(?P<role>class|func|meth|mod|data|attr|exc|obj|const):`(?P<body>[^`]+)`")
_EXPLICIT = re.compile(r"^(?P<title>.*?)\s*<(?P<target>[^<>]+)>$")
_PROPERTY_TYPE = re.compile(r"^(?P<type>[^:\n]+?) : (?P<description>.+)", re.DOTALL)
_CALLABLE_ROLES = ("func", "meth")


def _walk(obj: griffe.Object):
    """The object and every member it defines (aliases to other modules are skipped)."""
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)


class SphinxRoles(griffe.Extension):
    """Sphinx roles become optional autorefs; property types move out of the description."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs) -> None:
        for obj in _walk(pkg):
            if obj.docstring is None:
                continue
            if "property" in obj.labels:
                self._property_type(obj)
            obj.docstring.value = _ROLE.sub(lambda m: self._reference(m, obj, loader), obj.docstring.value)
            if (obj.is_class or obj.is_function) and obj.docstring.parser is not None:
                self._signature_defaults(obj)

    @staticmethod
    def _signature_defaults(obj) -> None:
        """Documented parameters take their defaults from the signature (parsed once, here)."""
        try:
            defaults = {p.name: p.default for p in obj.parameters if p.default is not None}
        except (griffe.AliasResolutionError, AttributeError):
            return
        # ``parsed`` is cached: the page renders the sections as corrected here
        for section in obj.docstring.parsed:
            if section.kind is griffe.DocstringSectionKind.parameters:
                for item in section.value:
                    if item.name in defaults:
                        item.default = defaults[item.name]

    @staticmethod
    def _property_type(obj) -> None:
        match = _PROPERTY_TYPE.match(obj.docstring.value)
        if match is None:
            return
        if getattr(obj, "annotation", None) is None:  # the code's own annotation wins
            obj.annotation = match["type"].strip()
        description = match["description"].strip()
        obj.docstring.value = description[:1].upper() + description[1:]

    @staticmethod
    def _reference(match: re.Match, scope, loader) -> str:
        body = match["body"].strip()
        explicit = _EXPLICIT.match(body)
        if explicit:
            title, target = explicit["title"], explicit["target"].strip()
        else:
            target = body.lstrip("~")
            title = target.rsplit(".", 1)[-1] if body.startswith("~") else target
        target = target.lstrip(".")
        if match["role"] in _CALLABLE_ROLES and not explicit and not title.endswith(")"):
            title += "()"
        identifier = _resolve(target, scope, loader)
        return (f'<autoref identifier="{html.escape(identifier)}" optional>'
                f"<code>{html.escape(title)}</code></autoref>")  # fmt: skip


def _resolve(target: str, scope, loader) -> str:
    """The full path of the object ``target`` names from ``scope`` (itself when unknown)."""
    candidates = []
    head, _, rest = target.partition(".")
    obj = scope
    while obj is not None:  # the docstring's own scope, then the enclosing ones
        try:
            resolved = obj.resolve(head)
        except (griffe.NameResolutionError, griffe.AliasResolutionError, KeyError, ValueError):
            resolved = None
        if resolved:
            candidates.append(f"{resolved}.{rest}" if rest else resolved)
            break
        obj = obj.parent
    candidates.append(target)
    for path in candidates:
        try:
            found = loader.modules_collection.get_member(path)
        except (KeyError, ValueError, griffe.AliasResolutionError):
            continue
        try:  # an alias (a name a module re-exports) is documented under its target's path
            return found.final_target.path if found.is_alias else found.path
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            return path
    return candidates[0]
