"""Sphinx configuration for the gosession-tornado docs.

Build with ``tox -e docs`` or ``sphinx-build -W --keep-going -b html docs docs/_build/html``.
No extension needs the network: intersphinx is off on purpose, so references
to Tornado and the standard library render as plain text.
"""

from __future__ import annotations

import importlib
import pathlib
import re
import sys
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # the docs describe this checkout, installed or not

_INIT = (ROOT / "gosession_tornado" / "__init__.py").read_text(encoding="utf-8")
_match = re.search(r'^__version__ = "([^"]+)"', _INIT, re.M)

project = "gosession-tornado"
author = "gosession-tornado contributors"
copyright = "gosession-tornado contributors, BSD-3-Clause"
release = _match.group(1) if _match else "0.0.0"
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
]

root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []
html_static_path: list[str] = []
# furo: maintained, readable on phones, code blocks as wide as the text column.
html_theme = "furo"
html_theme_options = {
    "source_repository": "",
    "top_of_page_buttons": [],
}
html_title = f"gosession-tornado {release}"

# Docstrings are reST (Sphinx field lists); no napoleon.
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"show-inheritance": True}
autoclass_content = "class"
python_use_unqualified_type_names = True


def _resolve_reexport(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    """Resolve ``gosession_tornado.Name`` to where *Name* is documented.

    The public names are documented in their defining modules
    (``gosession_tornado.manager.SessionManager``); docstrings refer to them
    through the package (``gosession_tornado.SessionManager``).
    """
    if node.get("refdomain") != "py":
        return None
    target: str = node.get("reftarget", "")
    if not target.startswith("gosession_tornado."):
        return None
    head, _, tail = target.partition(".")[2].partition(".")
    package = importlib.import_module("gosession_tornado")
    obj = getattr(package, head, None)
    module = getattr(obj, "__module__", None)
    if obj is None or not module or module == "gosession_tornado":
        return None
    new_target = f"{module}.{head}" + (f".{tail}" if tail else "")
    if new_target == target:
        return None
    domain = env.get_domain("py")
    builder = app.builder
    return domain.resolve_xref(
        env, node.get("refdoc", ""), builder, node.get("reftype", "obj"), new_target, node, contnode
    )


def setup(app: Any) -> dict[str, Any]:
    app.connect("missing-reference", _resolve_reexport)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
