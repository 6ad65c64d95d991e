"""Three identical message tables, so every variant writes the same row shape:

* ``PlainMessage``: no stream, no receiver (the "no broadcasting" baseline);
* ``Message``: a turbo_tasks ``ModelStream`` with ``on_save`` (bench/benchapp/streams.py);
* ``NaiveMessage``: a ``post_save`` receiver that calls ``task.delay(pk)`` (naive Celery).
"""

from django.db import models


class Room(models.Model):
    name = models.CharField(max_length=100)
    # F3 renders through a template that counts its renders in Redis.
    counted = models.BooleanField(default=False)
    # F2 renders through a template that stamps the worker's task start and render times
    # (kept out of F1 and F3, where the two template tags would add ~10 % per job).
    stamped = models.BooleanField(default=False)

    def __str__(self) -> str:
        return self.name


class Message(models.Model):
    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="messages")
    text = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.text


class PlainMessage(models.Model):
    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="+")
    text = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.text


class NaiveMessage(models.Model):
    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="+")
    text = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.text
