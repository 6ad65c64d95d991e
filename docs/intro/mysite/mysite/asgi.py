"""
ASGI config for mysite project.

It exposes the ASGI callable as a module-level variable named ``application``.

For more information on this file, see
https://docs.djangoproject.com/en/5.2/howto/deployment/asgi/
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

# Set Django up before importing code that uses models (Channels' auth, turbo_tasks).
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack
from channels.routing import ProtocolTypeRouter, URLRouter
from channels.security.websocket import AllowedHostsOriginValidator

import turbo_tasks.routing

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # Pages of this site only (ALLOWED_HOSTS), with their logged-in user, subscribe to
        # their streams over one websocket each, at /ws/turbo/.
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(turbo_tasks.routing.websocket_urlpatterns))
        ),
    }
)
