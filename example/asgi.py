"""ASGI entry point: ``uvicorn example.asgi:application``.

HTTP goes to Django, with static files (Turbo, the turbo_tasks element) served by the app
itself because the demo runs uvicorn with nothing in front. Websockets are routed exactly as
the tutorial (docs/intro/tutorial.md) tells users to.
"""

import os

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

import turbo_tasks.routing  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": ASGIStaticFilesHandler(django_asgi_app),
        "websocket": AllowedHostsOriginValidator(  # refuses other sites' pages
            AuthMiddlewareStack(  # user_passes_test sees request.user
                URLRouter(turbo_tasks.routing.websocket_urlpatterns)  # ws/turbo/
            )
        ),
    }
)
