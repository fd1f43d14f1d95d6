"""
The private Twisted names keda_proxy relies on, pinned.

setup.cfg bounds Twisted to the versions tested; within them a private name
(``_rawHeaders``, ``HTTPChannel.__first_line``, ``EPollReactor._selectables``
...) can still change in any release.  This test finds every one the sources
use and compares the list with L{ALLOWED} below, so that a new one is a
decision made in review, and a removed one is crossed off; and it checks each
pinned name is still defined where it is pinned in the installed Twisted, so
that an upgrade which drops one fails here, by name, rather than at run time.

What counts, read from the sources' syntax trees (nothing is run):

  - an import of a private name or module from C{twisted};
  - a private attribute (``x._name``, also through ``getattr``/``setattr``/
    ``hasattr``/``delattr`` with a literal name; name-mangled spellings such as
    ``_HTTPChannel__first_line`` included) on C{self} in a class that
    inherits the name from a Twisted class, and any method or class attribute
    such a class defines over one of Twisted's;
  - a private attribute on anything else, whose name Twisted defines.

The last kind is only a name match: C{ctx._context} may be pyOpenSSL's and
C{counter._idle} keda_proxy's own.  Each such use has been looked at and
pinned in L{ALLOWED} or in L{NOT_TWISTED}; a new one fails the test until
it is sorted into one or the other.
"""

from __future__ import annotations

import ast
import importlib
from collections import defaultdict
from pathlib import Path

import pytest
from twisted.python.reflect import namedAny

import keda_proxy
import twisted

#: (keda_proxy module, private name) -> where the installed Twisted defines
#: it: "module.Class", or the module for a module-level name; an import is
#: pinned by its full dotted name.  Only the opt-in reactor may have any.
ALLOWED = {
    # the keda-epoll reactor: the dispatch step and the TCP client's set-up
    ("keda_proxy.epolldispatch", "_commonConnection"): "twisted.internet.tcp.BaseClient",
    ("keda_proxy.epolldispatch", "_connectDone"): "twisted.internet.tcp.BaseClient",
    ("keda_proxy.epolldispatch", "_disconnectSelectable"):
        "twisted.internet.posixbase._DisconnectSelectableMixin",
    ("keda_proxy.epolldispatch", "_doReadOrWrite"): "twisted.internet.posixbase._PollLikeMixin",
    ("keda_proxy.epolldispatch", "_finishInit"): "twisted.internet.tcp._BaseBaseClient",
    ("keda_proxy.epolldispatch", "_makeTransport"): "twisted.internet.tcp.Connector",
    ("keda_proxy.epolldispatch", "_poller"): "twisted.internet.epollreactor.EPollReactor",
    ("keda_proxy.epolldispatch", "_requiresResolution"): "twisted.internet.tcp._BaseTCPClient",
    ("keda_proxy.epolldispatch", "_selectables"): "twisted.internet.epollreactor.EPollReactor",
}

#: uses that only share a name with one of Twisted's (not on self), each
#: looked at: what they are instead
NOT_TWISTED = {
    ("keda_proxy.steps._counting", "_idle"): "keda_proxy.steps._counting.QueueCounter._idle",
    ("keda_proxy._tls", "_context"): "pyOpenSSL's SSL.Context._context (private to pyOpenSSL)",
}

SOURCES = Path(keda_proxy.__file__).resolve().parent
TWISTED = Path(twisted.__file__).resolve().parent
ACCESSORS = ("getattr", "setattr", "hasattr", "delattr")


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def mangled(name: str, cls: str | None) -> str:
    """C{name} as Python stores it when written in class C{cls}."""
    if cls and name.startswith("__") and not name.endswith("__"):
        return f"_{cls.lstrip('_')}{name}"
    return name


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def on_self(node) -> bool:
    return isinstance(node, ast.Name) and node.id in ("self", "cls")


def definitions(tree, module):
    """(name, owner) for each private name a module defines: functions,
    classes and assignments at module or class level, and attributes stored
    on C{self}; the owner is "module.Class" or "module"."""
    found = []

    def visit(node, owner, cls, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                if private(child.name) and not in_function:
                    found.append((child.name, owner))
                visit(child, f"{owner}.{child.name}", child.name, False)
                continue
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = mangled(child.name, cls)
                if private(name) and not in_function:
                    found.append((name, owner))
                visit(child, owner, cls, True)
                continue
            if isinstance(child, ast.Attribute) and isinstance(child.ctx, ast.Store) \
                    and on_self(child.value):
                name = mangled(child.attr, cls)
                if private(name):
                    found.append((name, owner))
            if isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store) \
                    and not in_function:
                name = mangled(child.id, cls)
                if private(name):
                    found.append((name, owner))
            visit(child, owner, cls, in_function)

    visit(tree, module, None, False)
    return found


def attribute_uses(tree):
    """(name, on self, enclosing top-level class or None) for each private
    attribute read, written or deleted, directly or by a literal name."""
    found = []

    def attribute(node):
        if isinstance(node, ast.Attribute):
            return node.value, node.attr
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in ACCESSORS and len(node.args) >= 2 \
                and isinstance(node.args[1], ast.Constant) \
                and isinstance(node.args[1].value, str):
            return node.args[0], node.args[1].value
        return None

    def visit(node, cls, top):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, child.name if top else None, False)
                continue
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, cls, False)
                continue
            used = attribute(child)
            if used is not None:
                name = mangled(used[1], cls)
                if private(name):
                    found.append((name, on_self(used[0]), cls))
            visit(child, cls, top)

    visit(tree, None, True)
    return found


def twisted_imports(tree):
    """Dotted names of private things imported from twisted."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "twisted":
            for alias in node.names:
                if private(alias.name) or any(map(private, node.module.split("."))):
                    found.add(f"{node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "twisted" and any(map(private, parts)):
                    found.add(alias.name)
    return found


def parse(path: Path):
    return ast.parse(path.read_text(encoding="utf-8", errors="replace"), str(path))


@pytest.fixture(scope="module")
def twisted_defines():
    """name -> owners in the installed Twisted ("module.Class" or
    "module"), from its sources, tests left out."""
    index = defaultdict(set)
    for path in TWISTED.rglob("*.py"):
        if "test" in path.relative_to(TWISTED).parts[:-1]:
            continue
        for name, owner in definitions(parse(path), module_name(path, TWISTED)):
            index[name].add(owner)
    return index


def twisted_bases(module: str, cls: str | None) -> list[str]:
    """The Twisted classes in the MRO of C{module.cls}, as "module.Class"."""
    obj = getattr(importlib.import_module(module), cls, None) if cls else None
    if not isinstance(obj, type):
        return []
    return [f"{c.__module__}.{c.__qualname__}" for c in obj.__mro__
            if c.__module__.split(".")[0] == "twisted"]


def find(trees, twisted_defines, bases=twisted_bases):
    """Private Twisted names in C{trees}, {module: syntax tree}, as two sets
    of (module, name): those certainly Twisted's, and those that only share
    a name with one of Twisted's.  C{bases(module, cls)} lists a class's
    Twisted bases."""

    def inherited(module, cls, name):
        return any(base in twisted_defines[name] for base in bases(module, cls))

    sure, maybe = set(), set()
    for module, tree in trees.items():
        sure |= {(module, name) for name in twisted_imports(tree)}
        for name, owner in definitions(tree, module):
            cls = owner[len(module) + 1:] or None
            if name in twisted_defines and inherited(module, cls, name):
                sure.add((module, name))  # overrides or sets one of Twisted's
        for name, self_, cls in attribute_uses(tree):
            if name not in twisted_defines:
                continue
            if not self_:
                maybe.add((module, name))
            elif inherited(module, cls, name):
                sure.add((module, name))
    return sure, maybe - sure


@pytest.fixture(scope="module")
def scan(twisted_defines):
    trees = {module_name(p, SOURCES): parse(p) for p in sorted(SOURCES.rglob("*.py"))}
    return find(trees, twisted_defines)


def difference(found, pinned):
    new, gone = sorted(set(found) - set(pinned)), sorted(set(pinned) - set(found))
    return "\n".join([f"new: {x} (pin it in ALLOWED, with where Twisted defines it, or "
                      "in NOT_TWISTED if it only shares the name)" for x in new]
                     + [f"no longer used: {x} (cross it off)" for x in gone])


def test_private_twisted_names_in_use_are_the_pinned_ones(scan):
    sure, maybe = scan
    assert not set(ALLOWED) & set(NOT_TWISTED)
    assert sure <= set(ALLOWED), difference(sure, set(ALLOWED) & sure)
    found, pinned = sure | maybe, set(ALLOWED) | set(NOT_TWISTED)
    assert found == pinned, difference(found, pinned)


def test_each_pinned_name_is_still_where_the_installed_twisted_defines_it(twisted_defines):
    missing = []
    for (module, name), owner in sorted(ALLOWED.items()):
        if name.startswith("twisted."):
            try:
                namedAny(name)
            except (AttributeError, ImportError) as e:
                missing.append(f"{module} imports {name}: {e}")
            continue
        try:
            namedAny(owner)
        except (AttributeError, ImportError) as e:
            missing.append(f"{module} uses {owner}.{name}, and {owner} is gone: {e}")
            continue
        if owner not in twisted_defines.get(name, ()):
            missing.append(f"{module} uses {owner}.{name}, which Twisted "
                           f"{twisted.__version__} no longer defines")
    assert not missing, "\n".join(missing)


def test_the_scan_finds_each_kind_of_use(twisted_defines):
    """The scan itself, on a made-up module: each way of reaching a private
    Twisted name is found, and the module's own private names are not."""
    tree = ast.parse("""
from twisted.web.http import _IdentityTransferDecoder
from twisted.web import http


class Channel(http.HTTPChannel):
    def _finishRequestBody(self, data):   # overrides Twisted's
        self._handlingRequest = True      # Twisted's, on self
        self._mine = 1                    # its own
        self._buffer = b""                # LineReceiver's: inherited too


class Own:
    def __init__(self):
        self._state = 0                   # a name Twisted also defines, elsewhere


def poke(channel, headers, other):
    headers._rawHeaders.clear()           # a name Twisted defines: maybe
    getattr(channel, "_HTTPChannel__first_line")
    channel._mine                         # Twisted has no such name
    other._state                          # maybe, though Own defines it too
""")

    def bases(module, cls):
        return twisted_bases("twisted.web.http", "HTTPChannel") if cls == "Channel" else []

    sure, maybe = find({"m": tree}, twisted_defines, bases)
    assert sure == {("m", name) for name in (
        "twisted.web.http._IdentityTransferDecoder", "_finishRequestBody",
        "_handlingRequest", "_buffer")}
    assert maybe == {("m", name) for name in (
        "_rawHeaders", "_HTTPChannel__first_line", "_state")}


def test_only_the_opt_in_reactor_uses_private_twisted_names():
    """Everything but C{twistd -r keda-epoll} runs on Twisted's public API."""
    assert {module for module, _ in ALLOWED} == {"keda_proxy.epolldispatch"}
