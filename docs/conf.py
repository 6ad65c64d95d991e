"""Sphinx configuration: ``make docs`` builds docs/ into docs/_build/html."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from sphinx.application import Sphinx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# autodoc imports turbo_tasks, whose modules need configured settings (docs/settings.py).
os.environ["DJANGO_SETTINGS_MODULE"] = "docs.settings"
import django  # noqa: E402

django.setup()

import turbo_tasks  # noqa: E402

project = "turbo_tasks"
author = "turbo_tasks contributors"
copyright = "turbo_tasks contributors"
release = turbo_tasks.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
# intro/mysite/ is a runnable project that the tutorial quotes with literalinclude.
exclude_patterns = ["_build", "intro/mysite/**"]

myst_enable_extensions = ["colon_fence", "deflist"]
# Anchors for headings down to ###, so links such as protocol.md#catch-up resolve.
myst_heading_anchors = 3

# Warnings are errors in `make docs`; cross-references must resolve too (-n). intersphinx
# stays off (the build runs offline), so names of other projects are written as literals.
nitpicky = True

autodoc_member_order = "bysource"
# Signatures show names and defaults, as Django's reference does; the types are in the
# source (the package ships py.typed). Shown in signatures they would name private aliases
# (rendering.Context, actions.Options) that have no page of their own.
autodoc_typehints = "none"

html_theme = "furo"
html_title = f"turbo_tasks {release}"
html_static_path = ["_static"]


def setup(app: Sphinx) -> None:
    # {setting}`HISTORY_LENGTH` links to the key's entry in ref/settings, as Django's
    # documentation links its settings.
    app.add_object_type(
        "setting", "setting", indextemplate="pair: %s; TURBO_TASKS setting", objname="setting"
    )
