from django.conf import settings
from django.db import models


class Room(models.Model):
    name = models.CharField(max_length=100)
    private = models.BooleanField(default=False)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True)


class Message(models.Model):
    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="messages")
    text = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)


class Unstreamed(models.Model):
    """A model without a stream: its writes must never reach the broker."""

    name = models.CharField(max_length=100)


class Gated(models.Model):
    """Its hook blocks until a file appears: lets a test kill a worker mid-task."""

    room = models.ForeignKey(Room, on_delete=models.CASCADE)
    name = models.CharField(max_length=100)
    started_path = models.CharField(max_length=500)
    gate_path = models.CharField(max_length=500)


class Member(models.Model):
    """Holds credentials: its delete snapshots must leave them out."""

    room = models.ForeignKey(Room, on_delete=models.CASCADE)
    name = models.CharField(max_length=100)
    password = models.CharField(max_length=128)
    api_token = models.CharField(max_length=64)


class Notice(models.Model):
    """Its stream renders a translated, time-zone dependent template and spares the sender."""

    room = models.ForeignKey(Room, on_delete=models.CASCADE)
    at = models.DateTimeField()
