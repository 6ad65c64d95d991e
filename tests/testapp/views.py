"""A form view answering Turbo's submissions with streams, as tests/test_http.py drives it."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, HttpResponseRedirect

from turbo_tasks.http import TurboStreamResponse, accepts_turbo_stream

from .models import Notice, Room


def post_message(request: HttpRequest) -> HttpResponse:
    text = request.POST.get("text", "")
    if not accepts_turbo_stream(request):
        return HttpResponseRedirect("/")
    if not text:
        return TurboStreamResponse(request, status=422).replace(
            "chat/message_form.html", {"error": "Say something."}, id="message-form"
        )
    return (
        TurboStreamResponse(request)
        .append("chat/message.html", {"message": {"id": 1, "text": text}}, id="messages")
        .remove(id="form-errors")
    )


def post_notice(request: HttpRequest, room_id: int) -> HttpResponse:
    """Saves a Notice; its stream's hook broadcasts it, sparing this request's socket."""
    notice = Notice.objects.create(room=Room.objects.get(pk=room_id), at=request.POST["at"])
    return HttpResponse(str(notice.pk), status=201)
