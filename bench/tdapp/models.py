"""The same chat models, broadcast by turbo-django 0.4.4 (bench/tdapp/streams.py)."""

from django.db import models


class TDRoom(models.Model):
    name = models.CharField(max_length=100)
    counted = models.BooleanField(default=False)

    def __str__(self) -> str:
        return self.name


class TDMessage(models.Model):
    room = models.ForeignKey(TDRoom, on_delete=models.CASCADE, related_name="messages")
    text = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.text
