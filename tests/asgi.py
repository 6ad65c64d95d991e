"""The ASGI app the end-to-end tests serve, routed as docs/intro/tutorial.md says."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

from channels.auth import AuthMiddlewareStack
from channels.routing import ProtocolTypeRouter, URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from django.core.asgi import get_asgi_application

django_asgi_app = get_asgi_application()

import turbo_tasks.routing  # noqa: E402

# As a project's __init__.py does (Celery's Django guide): views publish through this app.
from worker import app as celery_app  # noqa: E402, F401

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(turbo_tasks.routing.websocket_urlpatterns))
        ),
    }
)
