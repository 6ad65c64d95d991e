"""``TurboTasksMiddleware``: which page a request came from, for ``exclude_sender``.

::

    MIDDLEWARE = [
        ...,
        "turbo_tasks.middleware.TurboTasksMiddleware",
    ]

On pages with ``{% turbo_subscribe %}`` the element adds ``X-Turbo-Tasks-Socket: <socket
id>`` to Turbo's fetch requests (form submissions, link visits, frame loads) to this origin;
Turbo 8 adds ``X-Turbo-Request-Id``. While the view runs, jobs and actions record both
(turbo_tasks.request_context), so an action sent with ``exclude_sender=True`` skips the
socket of the page that made the change, and a ``refresh`` carries ``request-id="…"``,
which Turbo ignores on the page that made the request. Malformed header values are ignored.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest

from turbo_tasks import request_context


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
        with _origin_of(request):
            return self.get_response(request)

    async def _acall(self, request: HttpRequest) -> Any:
        with _origin_of(request):
            response: Awaitable[Any] = self.get_response(request)
            return await response


def _origin_of(request: HttpRequest) -> Any:
    return request_context.origin(
        request.headers.get(request_context.SOCKET_HEADER),
        request.headers.get(request_context.REQUEST_ID_HEADER),
    )
