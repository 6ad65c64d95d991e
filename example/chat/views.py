"""Plain Django views that work with Turbo Drive.

Turbo submits forms with fetch and needs a redirect after a successful POST (we send 303 See
Other) and a 4xx status for a form re-rendered with errors (we send 422). The views never
broadcast: saving or deleting a Message is enough, MessageStream does the rest in a worker.
"""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import Exists, OuterRef
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_http_methods, require_POST

from .forms import MessageForm
from .models import Message, Room

UNPROCESSABLE = 422


class HttpResponseSeeOther(HttpResponseRedirect):
    status_code = 303


class LoginView(auth_views.LoginView):
    """Django's login view, answering a failed login with 422 so Turbo shows the errors."""

    def form_invalid(self, form):
        response = super().form_invalid(form)
        response.status_code = UNPROCESSABLE
        return response


@login_required
def room_list(request: HttpRequest) -> HttpResponse:
    rooms = Room.objects.annotate(
        is_member=Exists(
            Room.members.through.objects.filter(room=OuterRef("pk"), user=request.user)
        )
    )
    return render(request, "chat/room_list.html", {"rooms": rooms})


@login_required
def room_detail(request: HttpRequest, pk: int) -> HttpResponse:
    room = get_object_or_404(Room, pk=pk)
    if not room.has_member(request.user):
        # Deliberately still subscribes to the room's stream (see the template): what keeps
        # non-members out of the live updates is RoomStream.user_passes_test on the server.
        return render(request, "chat/room_forbidden.html", {"room": room}, status=403)
    return _room_page(request, room, MessageForm())


def _room_page(
    request: HttpRequest, room: Room, form: MessageForm, status: int = 200
) -> HttpResponse:
    context = {
        "room": room,
        "form": form,
        "messages_list": room.messages.select_related("author"),
        "members": room.members.order_by("username"),
    }
    return render(request, "chat/room.html", context, status=status)


@require_POST
@login_required
def post_message(request: HttpRequest, pk: int) -> HttpResponse:
    room = get_object_or_404(Room, pk=pk)
    if not room.has_member(request.user):
        raise PermissionDenied("Only members can post in this room.")
    form = MessageForm(request.POST)
    if not form.is_valid():
        return _room_page(request, room, form, status=UNPROCESSABLE)
    Message.objects.create(room=room, author=request.user, text=form.cleaned_data["text"])
    return HttpResponseSeeOther(room.get_absolute_url())


def _own_message(request: HttpRequest, pk: int) -> Message:
    message = get_object_or_404(Message.objects.select_related("room"), pk=pk)
    if message.author_id != request.user.pk:
        raise PermissionDenied("Only the author can change a message.")
    return message


@require_http_methods(["GET", "POST"])
@login_required
def edit_message(request: HttpRequest, pk: int) -> HttpResponse:
    message = _own_message(request, pk)
    form = MessageForm(request.POST or None, instance=message)
    if request.method == "POST":
        if form.is_valid():
            form.save()
            return HttpResponseSeeOther(message.room.get_absolute_url())
        status = UNPROCESSABLE
    else:
        status = 200
    return render(
        request, "chat/message_edit.html", {"form": form, "message": message}, status=status
    )


@require_http_methods(["GET", "POST"])
@login_required
def delete_message(request: HttpRequest, pk: int) -> HttpResponse:
    message = _own_message(request, pk)
    if request.method == "POST":
        message.delete()
        return HttpResponseSeeOther(message.room.get_absolute_url())
    return render(request, "chat/message_delete.html", {"message": message})
