"""Components: a stream with a template of its own (turbo-django's ``BroadcastComponent``
and ``UserBroadcastComponent``).

A page shows a component with ``{% turbo_component component %}``: the tag subscribes
the page to it and renders its template in place, in the request. ``component.render(…)``
later updates it on every subscribed page: it sends ::

    <turbo-stream action="update" target="{component.dom_id}"><template>…</template>
    </turbo-stream>

after the current transaction commits, rendered by a worker like any stream action (so the
context must travel: see ``topics/streams``), and kept for catch-up like any frame.
Declare components in an app's ``streams.py``, as streams::

    class AlertComponent(turbo.BroadcastComponent):
        template_name = "components/alert.html"

    AlertComponent().render(level="warning", text="Restarting in 10 minutes")
"""

from __future__ import annotations

from typing import Any, ClassVar

from django.contrib.auth import get_user_model
from django.db import models
from django.template.loader import render_to_string
from django.utils.text import slugify

from turbo_tasks.signing import StreamRef
from turbo_tasks.snapshots import json_value
from turbo_tasks.streams import Stream


class BroadcastComponent(Stream):
    """A component that shows the same content on every subscribed page."""

    template_name: ClassVar[str | None] = None

    class Meta:
        abstract = True

    def get_context(self) -> dict[str, Any]:
        """The context every render starts from (override it); empty by default."""
        return {}

    def compute_context(
        self, context: dict[str, Any] | None = None, **context_kwargs: Any
    ) -> dict[str, Any]:
        """``get_context()``, updated with ``context`` and then ``context_kwargs``."""
        computed = self.get_context()
        computed.update(context or {})
        computed.update(context_kwargs)
        return computed

    @property
    def dom_id(self) -> str:
        """The id of the element the component renders into: its stream's name and
        arguments, e.g. ``chat-alertcomponent`` or ``chat-cartcountcomponent-5``."""
        ref = self.ref()
        parts = [ref["stream"], *map(str, ref["args"]), *map(str, ref["kwargs"].values())]
        return slugify("-".join(parts).replace(".", "-"))

    def render(self, context: dict[str, Any] | None = None, **context_kwargs: Any) -> None:
        """Update the component on every subscribed page (``action="update"``, after the
        current transaction commits)."""
        self.update(
            self._template(), self.compute_context(context, **context_kwargs), id=self.dom_id
        )

    def initial_render(self, context: dict[str, Any] | None = None) -> str:
        """The component's HTML for a page being rendered, in the request:
        ``{% turbo_component %}`` calls it with the page's context."""
        return render_to_string(self._template(), self.compute_context(context))

    def _template(self) -> str:
        if not self.template_name:
            raise TypeError(
                f"{type(self).__name__} has no template_name: set template_name = "
                f'"app/component.html" on the class.'
            )
        return self.template_name


class UserBroadcastComponent(BroadcastComponent):
    """A component of one user: only that user's pages may subscribe to it, so
    ``render()`` updates only them (the cart count of ``CartCountComponent(user)``)."""

    class Meta:
        abstract = True

    def __init__(self, user: models.Model | Any) -> None:
        """``user``: a user instance, or its pk."""
        if isinstance(user, models.Model):
            self._user: models.Model | None = user
            self.user_pk = user.pk
        else:
            self._user, self.user_pk = None, user
        if self.user_pk is None:
            raise ValueError(f"{type(self).__name__} needs a saved user (or its pk).")

    @property
    def user(self) -> models.Model:
        """The user, loaded when first read if the component was built from a pk."""
        if self._user is None:
            self._user = get_user_model()._default_manager.get(pk=self.user_pk)
        return self._user

    def ref(self) -> StreamRef:
        return {"stream": self.stream_name(), "args": [json_value(self.user_pk)], "kwargs": {}}

    def user_passes_test(self, user: Any) -> bool:
        """Only the component's own user, logged in."""
        if user is None or not user.is_authenticated:
            return False
        return bool(json_value(user.pk) == json_value(self.user_pk))
