"""The transactional outbox (``TURBO_TASKS["PUBLISH_MODE"] = "outbox"``)."""

from __future__ import annotations

from django.db import models
from django.utils import timezone


class OutboxJob(models.Model):
    """One broadcast job, written in the same transaction as the change it describes.

    Deleted once a worker has delivered it (pushed its frames, or found it can never be
    delivered). A row still here after its claim ran out was not published (the broker was
    unreachable) or not delivered (a worker was lost): the relay publishes it again.
    """

    job = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    # A publisher (the committing process or a relay) owns the row until claimed_until.
    claim = models.UUIDField(null=True, blank=True, db_index=True)
    claimed_until = models.DateTimeField(null=True, blank=True)
    # When its job was last published: the relay compares it with the oldest message still
    # waiting in the broker's queue, to tell a queued row from a lost one.
    published_at = models.DateTimeField(null=True, blank=True, db_index=True)

    class Meta:
        ordering = ["id"]
        verbose_name = "outbox job"

    def __str__(self) -> str:
        return f"{self.job.get('action')} {self.job.get('model', '')} {self.job.get('pk', '')}"
