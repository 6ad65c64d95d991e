"""The example site's real processes for tests/test_browser.py and tests/test_demo.py.

Every stack gets a redis-server of its own (never the session Redis: the suite's worker
consumes ``turbo_tasks`` there with tests.settings and would fail on the example's models)
and a SQLite file of its own.
"""

from __future__ import annotations

import http.cookiejar
import os
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

from tests.helpers import ROOT, accepts

PASSWORD = "turbo-demo"  # example/chat/management/commands/seed_demo.py


def example_env(db_path: Path, redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TURBO_TEST_", "PYTEST_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="example.settings",
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
        REDIS_URL=redis_url,
        DATABASE_URL=f"sqlite:///{db_path}",
        **extra,
    )
    return env


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "example/manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"manage.py {' '.join(args)} failed:\n{result.stderr}"
    return result.stdout


def port_answers(port: int) -> bool:
    return accepts(port)


@dataclass
class Response:
    status: int
    headers: Message  # case-insensitive: headers["Location"]
    body: str


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None  # hand 3xx back to the caller, so tests see 302/303 themselves


class HttpClient:
    """A cookie-keeping HTTP client (urllib) that logs in like a browser without JS."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.cookies), _NoRedirect()
        )

    def request(self, path: str, data: dict[str, str] | None = None) -> Response:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        req = urllib.request.Request(self.base_url + path, data=body)
        try:
            with self.opener.open(req, timeout=15) as response:
                return Response(response.status, response.headers, response.read().decode())
        except urllib.error.HTTPError as error:
            with error:
                return Response(error.code, error.headers, error.read().decode())

    def get(self, path: str) -> Response:
        return self.request(path)

    def post_form(self, path: str, data: dict[str, str], form_page: str | None = None) -> Response:
        """POST ``data`` with the CSRF token of the form on ``form_page`` (default: ``path``)."""
        page = self.get(form_page or path)
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.body)
        assert token, f"no CSRF token on {form_page or path} ({page.status})"
        return self.request(path, {"csrfmiddlewaretoken": token.group(1), **data})

    def login(self, username: str, password: str = PASSWORD) -> None:
        response = self.post_form("/accounts/login/", {"username": username, "password": password})
        assert response.status == 302, f"login as {username} failed: {response.status}"

    def answers(self, path: str) -> bool:
        try:
            return self.get(path).status == 200
        except OSError:
            return False
