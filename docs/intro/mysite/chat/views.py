from django.shortcuts import get_object_or_404, redirect, render

from .models import Message, Room


def room(request, name):
    room = get_object_or_404(Room, name=name)
    if request.method == "POST":
        Message.objects.create(room=room, text=request.POST["text"])
        return redirect("room", name=room.name)
    return render(request, "chat/room.html", {"room": room})
