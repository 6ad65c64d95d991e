"""Live Hotwire Turbo Stream updates for Django models, delivered by Celery workers.

Declare streams in ``<app>/streams.py``::

    import turbo_tasks as turbo

    class MessageStream(turbo.ModelStream):
        class Meta:
            model = Message
"""

from turbo_tasks.bulk import deleted, saved
from turbo_tasks.rendering import ACTIONS, Broadcast
from turbo_tasks.signals import suppress
from turbo_tasks.streams import ModelStream, Stream

APPEND, PREPEND, REPLACE, UPDATE, BEFORE, AFTER, REMOVE = ACTIONS

__all__ = [
    "ACTIONS",
    "AFTER",
    "APPEND",
    "BEFORE",
    "PREPEND",
    "REMOVE",
    "REPLACE",
    "UPDATE",
    "Broadcast",
    "ModelStream",
    "Stream",
    "deleted",
    "saved",
    "suppress",
]
__version__ = "0.1.0"
