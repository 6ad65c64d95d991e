"""Websocket routes. Mount them behind origin and auth middleware::

from channels.auth import AuthMiddlewareStack
from channels.routing import ProtocolTypeRouter, URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
import turbo_tasks.routing

application = ProtocolTypeRouter({
    "http": django_asgi_app,
    "websocket": AllowedHostsOriginValidator(
        AuthMiddlewareStack(URLRouter(turbo_tasks.routing.websocket_urlpatterns))
    ),
})
"""

from __future__ import annotations

from django.urls import path

from turbo_tasks.consumers import TurboStreamsConsumer

websocket_urlpatterns = [
    path("ws/turbo/", TurboStreamsConsumer.as_asgi(), name="turbo_tasks"),
]
