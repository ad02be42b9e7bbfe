"""Sphinx configuration for tether_sync's documentation.

Build it with ``python3 -m sphinx -W -b html docs docs/_build/html`` (warnings are
errors; ``tests/test_docs.py`` does the same in a temporary directory).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, List

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from tether_sync.version import __version__

project = "tether_sync"
author = "tether_sync developers"
copyright = "2026, tether_sync developers"
version = release = __version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon"]
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}

exclude_patterns = ["_build"]
html_theme = "alabaster"
html_title = f"tether_sync {release}"
html_theme_options = {
    "description": "A resilient synchronous WebSocket client",
    "page_width": "1200px",  # room for the examples without a scroll bar
}


class OptionalModule(SphinxDirective):
    """``.. optional-module:: pkg.mod[:Name]``: its content only if that import works.

    The server library (``Hub``, ``MemoryStore``, ``RedisStore``),
    ``tether_sync.otel`` and ``tether_sync.testing`` are documented by their guide
    pages; their API reference appears once the module (and the name) exists in
    the tree being built, and the build never fails for its absence.
    """

    required_arguments = 1
    has_content = True

    def run(self) -> List[nodes.Node]:
        target = self.arguments[0]
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
            present = not attr or hasattr(module, attr)
        except ImportError:
            present = False
        if not present:
            note = nodes.paragraph(text=f"{target}: not part of this release.")
            return [note]
        container = nodes.container()
        self.state.nested_parse(StringList(list(self.content)), self.content_offset, container)
        return list(container.children)


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("optional-module", OptionalModule)
    return {"parallel_read_safe": True}
