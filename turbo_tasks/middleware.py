"""``TurboTasksMiddleware``: which page a request came from, for ``exclude_sender``.

::

    MIDDLEWARE = [
        ...,
        "turbo_tasks.middleware.TurboTasksMiddleware",
    ]

On pages with ``{% turbo_subscribe %}`` the element adds ``X-Turbo-Tasks-Socket: <socket
id>`` to Turbo's fetch requests (form submissions, link visits, frame loads) to this origin;
Turbo 8 adds ``X-Turbo-Request-Id``. A socket id names a socket of one user (it carries an
HMAC of that user's pk): it counts only in that user's requests, so list this middleware
after ``AuthenticationMiddleware``. While the view runs, jobs and actions record both
(turbo_tasks.request_context), so an action sent with ``exclude_sender=True`` skips the
socket of the page that made the change, and a ``refresh`` carries ``request-id="…"``,
which Turbo ignores on the page that made the request. Malformed header values are ignored.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest

from turbo_tasks import request_context, signing


class TurboTasksMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self._acall(request)
        header = request.headers.get(request_context.SOCKET_HEADER)
        user = getattr(request, "user", None) if header else None
        with _origin_of(request, header, user):
            return self.get_response(request)

    async def _acall(self, request: HttpRequest) -> Any:
        header = request.headers.get(request_context.SOCKET_HEADER)
        user = None
        if header and hasattr(request, "auser"):
            user = await request.auser()
        with _origin_of(request, header, user):
            response: Awaitable[Any] = self.get_response(request)
            return await response


def _origin_of(request: HttpRequest, header: str | None, user: Any) -> Any:
    # Only a socket of this request's own user counts: a stolen id is worth nothing to
    # another account (and ids of anonymous sockets only to anonymous requests).
    user_pk = user.pk if getattr(user, "is_authenticated", False) else None
    return request_context.origin(
        signing.socket_of(header, user_pk),
        request.headers.get(request_context.REQUEST_ID_HEADER),
    )
