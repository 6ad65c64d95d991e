"""Live Hotwire Turbo Stream updates for Django models, delivered by Celery workers.

Declare streams in ``<app>/streams.py``::

    import turbo_tasks as turbo

    class MessageStream(turbo.ModelStream):
        class Meta:
            model = Message
"""

from typing import TYPE_CHECKING, Any

from turbo_tasks.bulk import deleted, saved
from turbo_tasks.components import BroadcastComponent, UserBroadcastComponent
from turbo_tasks.markup import ACTIONS
from turbo_tasks.rendering import Broadcast
from turbo_tasks.streams import ModelStream, Stream
from turbo_tasks.suppression import suppress

if TYPE_CHECKING:
    from turbo_tasks.http import TurboRender, TurboStreamResponse, accepts_turbo_stream

APPEND, PREPEND, REPLACE, UPDATE, BEFORE, AFTER, REMOVE, REFRESH = ACTIONS

__all__ = [
    "ACTIONS",
    "AFTER",
    "APPEND",
    "BEFORE",
    "PREPEND",
    "REFRESH",
    "REMOVE",
    "REPLACE",
    "UPDATE",
    "Broadcast",
    "BroadcastComponent",
    "ModelStream",
    "Stream",
    "TurboRender",
    "TurboStreamResponse",
    "UserBroadcastComponent",
    "accepts_turbo_stream",
    "deleted",
    "saved",
    "suppress",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # turbo_tasks.http imports django.http, which worker processes and `import turbo_tasks`
    # in settings-time code have no use for: load it on first use.
    if name in ("TurboRender", "TurboStreamResponse", "accepts_turbo_stream"):
        from turbo_tasks import http

        return getattr(http, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
