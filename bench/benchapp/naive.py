"""Naive Celery: one task per save, published from a ``post_save`` receiver.

In autocommit (W1) the receiver calls ``naive_broadcast.delay(pk)`` directly; inside a
transaction (W2, F1) it defers the same call with ``transaction.on_commit``, as Celery's
Django guide recommends (``delay_on_commit``), so the task cannot run before the commit.
"""

from functools import partial

from django.db import transaction


def on_post_save(sender, instance, created, using="default", **kwargs):
    from bench.benchapp.tasks import naive_broadcast

    if transaction.get_connection(using).in_atomic_block:
        transaction.on_commit(partial(naive_broadcast.delay, instance.pk), using=using)
    else:
        naive_broadcast.delay(instance.pk)
