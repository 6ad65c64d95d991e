"""The supported corners, one session each: ``nox -s "tests(py3.13-django6.1)" -- tests/x.py``.

Django 5.2 LTS runs on Python 3.10+, Django 6.0 and 6.1 need Python 3.12+. Each session
installs the package with its ``test`` and ``example`` extras and pins Django to that
corner's release series; arguments after ``--`` go to pytest. The suite starts its own
redis-server, so ``redis-server`` must be on PATH (``make test`` installs it).

Interpreters come from PATH or, failing that, from pyenv (``$PYENV_ROOT/versions/3.X.*``),
so pyenv's versions work without ``pyenv global`` listing them (pyenv's shims are on PATH
for every version but fail for the ones not selected, so they do not count).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

# (python, django) per supported corner: the oldest Python of each Django series, and the
# newest Python with the newest Django.
CORNERS = [("3.10", "5.2"), ("3.12", "6.0"), ("3.13", "6.1")]


def _add_pyenv_interpreters() -> None:
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    for python in {python for python, _ in CORNERS}:
        on_path = shutil.which(f"python{python}")
        if on_path and not Path(on_path).is_relative_to(root / "shims"):
            continue
        found = sorted(
            (root / "versions").glob(f"{python}.*/bin/python{python}"),
            key=lambda p: [int(n) for n in p.parent.parent.name.split(".") if n.isdigit()],
        )
        if found:
            os.environ["PATH"] = f"{found[-1].parent}{os.pathsep}{os.environ['PATH']}"


_add_pyenv_interpreters()


@nox.session
@nox.parametrize(
    "python,django",
    CORNERS,
    ids=[f"py{python}-django{django}" for python, django in CORNERS],
)
def tests(session: nox.Session, django: str) -> None:
    # example: the browser tests run the example site.
    session.install(".[test,example]", f"django~={django}.0")
    session.run("python", "-c", "import django; print('Django', django.get_version())")
    session.run("python", "-m", "pytest", *session.posargs)
