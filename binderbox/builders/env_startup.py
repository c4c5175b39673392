"""Copied into every Python environment as ``_binderbox_startup`` (run by a ``.pth`` file).

This file is not imported by binderbox: the Python builder copies its text
into the environment's ``site-packages`` with a ``_binderbox_startup.pth``
that imports it at every interpreter start in that environment.  It must
therefore run on every Python an environment may use (3.6 and newer), import
nothing beyond the standard library at start, and cost nothing measurable.

What it does: **defers an expensive parser build that every Jupyter server
start pays for and almost never uses.**  ``jsonschema`` (through
``jupyter_events``, which ``jupyter_server`` imports) imports
``rfc3987_syntax`` when it is installed, and that module builds 39 Earley
parsers of the RFC 3987 grammar at import (one per rule it offers): about
1 s of CPU, a third of a session's start on a two-core machine.  They are
only needed to validate ``iri`` formats, which no Jupyter schema uses.

How: while (and only while) ``rfc3987_syntax.syntax_helpers`` executes,
``lark.Lark`` is replaced by :class:`_LazyLark`, which records its arguments
and builds the real parser on first attribute use (``parser.parse``), so
only the parsers a program uses are ever built.  The
module's behaviour is unchanged; validating an IRI works and pays the build
then, once.  If anything is unexpected (no lark, another loader), the module
loads as it always did.
"""

import importlib
import importlib.machinery
import sys
from typing import Any

_TARGET = "rfc3987_syntax.syntax_helpers"


class _LazyLark:
    """Stands in for ``lark.Lark(...)``: the real parser is built on first use."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        import threading  # not at start: most programs never get here

        state = self.__dict__
        state["_bbx_call"] = (args, kwargs)
        state["_bbx_parser"] = None
        state["_bbx_lock"] = threading.Lock()

    def _bbx_real(self) -> Any:
        state = self.__dict__
        with state["_bbx_lock"]:
            if state["_bbx_parser"] is None:
                lark: Any = importlib.import_module("lark")
                args, kwargs = state["_bbx_call"]
                state["_bbx_parser"] = lark.Lark(*args, **kwargs)
            return state["_bbx_parser"]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bbx_real(), name)


class _Loader:
    """Wraps the module's own loader; swaps ``lark.Lark`` during its execution."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        try:
            lark: Any = importlib.import_module("lark")
            real = lark.Lark
        except Exception:
            self._loader.exec_module(module)
            return
        lark.Lark = _LazyLark
        try:
            self._loader.exec_module(module)
        finally:
            lark.Lark = real

    def __getattr__(self, name: str) -> Any:  # get_source, get_data, is_package, ...
        return getattr(self._loader, name)


class _Finder:
    """Finds :data:`_TARGET` as the path finder does, with :class:`_Loader` around it."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != _TARGET:
            return None
        spec: Any = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _Loader(spec.loader)
        return spec


if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
    sys.meta_path.insert(0, _Finder())
