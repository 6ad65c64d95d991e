"""Turbo Stream responses from views, rendered in the request (named after ``django.http``).

A form that Turbo submits gets ``<turbo-stream>`` frames back in the response and Turbo
applies them to the page at once, without a websocket or a worker::

    from turbo_tasks.http import TurboStreamResponse, accepts_turbo_stream

    def post_message(request, room_id):
        message = Message.objects.create(room_id=room_id, text=request.POST["text"])
        if not accepts_turbo_stream(request):
            return redirect("room", room_id)
        return (
            TurboStreamResponse(request)
            .append("chat/message.html", {"message": message}, id="messages")
            .remove(id="form-errors")
        )

:class:`TurboRender` renders a frame here too, to send it to a stream (turbo-django's way
to broadcast what cannot travel to a worker).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string

from turbo_tasks import markup, rendering
from turbo_tasks.actions import Morph
from turbo_tasks.rendering import Context, Target

if TYPE_CHECKING:
    from typing import Unpack

    from turbo_tasks.streams import Stream

CONTENT_TYPE = "text/vnd.turbo-stream.html"


def accepts_turbo_stream(request: HttpRequest) -> bool:
    """Whether the request's ``Accept`` header names ``text/vnd.turbo-stream.html``.

    Turbo sends ``Accept: text/vnd.turbo-stream.html, text/html, application/xhtml+xml`` when
    it submits a form (any method but GET), so this is true for Turbo's form submissions and
    false for a plain browser's, whose ``*/*`` does not count.
    """
    accept = request.headers.get("Accept", "")
    return any(part.split(";", 1)[0].strip().lower() == CONTENT_TYPE for part in accept.split(","))


class TurboStreamResponse(HttpResponse):
    """An ``HttpResponse`` of ``<turbo-stream>`` frames (``text/vnd.turbo-stream.html``).

    Its actions take the arguments of the stream actions, render in the request (templates
    get ``request`` and the context processors' variables, so ``{% csrf_token %}`` works) and
    return the response, so they chain::

        TurboStreamResponse(request, status=422).replace("form.html", {"form": form}, id="f")

    ``frames`` are ``<turbo-stream>`` elements rendered already, e.g. by
    ``turbo_tasks.markup.turbo_stream()``; actions add theirs after them.
    """

    def __init__(
        self,
        request: HttpRequest | None = None,
        frames: Iterable[str] = (),
        *,
        status: int | None = None,
        reason: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            "".join(frames),
            content_type=f"{CONTENT_TYPE}; charset=utf-8",
            status=status,
            reason=reason,
            headers=headers,
        )
        # Not ``self.request``: Django's test client sets that attribute on responses.
        self._turbo_request = request

    def append(
        self, template: str | None = None, context: Context = None, **to: Unpack[Target]
    ) -> TurboStreamResponse:
        """Add ``<turbo-stream action="append" target="{id}"><template>…``."""
        return self._add("append", template, context, **to)

    def prepend(
        self, template: str | None = None, context: Context = None, **to: Unpack[Target]
    ) -> TurboStreamResponse:
        """Add ``<turbo-stream action="prepend" target="{id}"><template>…``."""
        return self._add("prepend", template, context, **to)

    def replace(
        self,
        template: str | None = None,
        context: Context = None,
        *,
        method: Morph = None,
        **to: Unpack[Target],
    ) -> TurboStreamResponse:
        """Add ``<turbo-stream action="replace" target="{id}"><template>…`` (with
        ``method="morph"``: ``<turbo-stream action="replace" method="morph" …``)."""
        return self._add("replace", template, context, method=method, **to)

    def update(
        self,
        template: str | None = None,
        context: Context = None,
        *,
        method: Morph = None,
        **to: Unpack[Target],
    ) -> TurboStreamResponse:
        """Add ``<turbo-stream action="update" target="{id}"><template>…`` (with
        ``method="morph"``: ``<turbo-stream action="update" method="morph" …``)."""
        return self._add("update", template, context, method=method, **to)

    def before(
        self, template: str | None = None, context: Context = None, **to: Unpack[Target]
    ) -> TurboStreamResponse:
        """Add ``<turbo-stream action="before" target="{id}"><template>…``."""
        return self._add("before", template, context, **to)

    def after(
        self, template: str | None = None, context: Context = None, **to: Unpack[Target]
    ) -> TurboStreamResponse:
        """Add ``<turbo-stream action="after" target="{id}"><template>…``."""
        return self._add("after", template, context, **to)

    def remove(self, *, id: str | None = None, selector: str | None = None) -> TurboStreamResponse:
        """Add ``<turbo-stream action="remove" target="{id}"></turbo-stream>``."""
        return self._add("remove", None, None, id=id, selector=selector)

    def _add(
        self,
        action: str,
        template: str | None,
        context: Context,
        *,
        id: str | None = None,
        selector: str | None = None,
        text: str | None = None,
        method: str | None = None,
    ) -> TurboStreamResponse:
        # Check everything before rendering, so a bad target never costs a template render.
        rendering.check_arguments(action, template, id, selector, text, method)
        self.write(
            rendering.render_frame(
                action,
                target=id,
                targets=selector,
                template=template,
                context=context,
                text=text,
                request=self._turbo_request,
                method=method,
            )
        )
        return self


class TurboRender:
    """A frame rendered now, in the caller (turbo-django's ``TurboRender``)::

        frame = turbo.TurboRender.init_from_template("chat/form.html", {"form": form}, request)
        room.stream.stream(frame.replace(id="message-form"))
        # sends <turbo-stream action="replace" target="message-form"><template>…</template>

    For what cannot travel to a worker in a stream action's context (a form, a request):
    the template renders here, and the markup is sent after the transaction commits. The
    action methods take ``selector`` (a CSS selector) or ``id`` and return the frame;
    ``response`` is a :class:`turbo_tasks.TurboStreamResponse` of it.
    """

    def __init__(self, inner_html: str = "") -> None:
        """``inner_html`` is safe HTML already (rendered by a template); ``"<b>"`` would be
        sent as a tag. Use ``stream.append(text=…)`` for text."""
        self.inner_html = inner_html
        self._rendered: str | None = None

    @classmethod
    def init_from_template(
        cls, template_name: str, context: dict[str, Any] | None = None, request: Any = None
    ) -> TurboRender:
        """Render ``template_name`` now (with ``request``: context processors, CSRF)."""
        rendering.check_template(template_name)
        return cls(render_to_string(template_name, context or {}, request=request))

    def append(self, selector: str | None = None, id: str | None = None) -> TurboRender:
        return self._frame("append", selector, id)

    def prepend(self, selector: str | None = None, id: str | None = None) -> TurboRender:
        return self._frame("prepend", selector, id)

    def replace(self, selector: str | None = None, id: str | None = None) -> TurboRender:
        return self._frame("replace", selector, id)

    def update(self, selector: str | None = None, id: str | None = None) -> TurboRender:
        return self._frame("update", selector, id)

    def before(self, selector: str | None = None, id: str | None = None) -> TurboRender:
        return self._frame("before", selector, id)

    def after(self, selector: str | None = None, id: str | None = None) -> TurboRender:
        return self._frame("after", selector, id)

    def remove(self, selector: str | None = None, id: str | None = None) -> TurboRender:
        return self._frame("remove", selector, id)

    def _frame(self, action: str, selector: str | None, id: str | None) -> TurboRender:
        self._rendered = markup.turbo_stream(
            action, target=id, targets=selector, content=self.inner_html
        )
        return self

    @property
    def rendered_template(self) -> str:
        """The ``<turbo-stream>`` markup; ValueError until an action method was called."""
        if self._rendered is None:
            raise ValueError(
                "TurboRender has no action yet: call append(), replace(), remove() … first."
            )
        return self._rendered

    @property
    def response(self) -> TurboStreamResponse:
        return TurboStreamResponse(frames=[self.rendered_template])

    def stream_to(self, stream: Stream) -> None:
        """Send this frame to ``stream`` (``stream.stream(frame)``)."""
        stream.stream(self)
