"""Django settings for the benchmarks (bench/run.py, its Celery worker and its ASGI server).

bench/run.py chooses the Redis ports and the SQLite file and passes them in the environment,
so every process of one run shares them. Both turbo_tasks and turbo-django 0.4.4 are
installed; each drives its own models (``bench.benchapp`` and ``bench.tdapp``), so neither
sees the other's writes.
"""

from __future__ import annotations

import json
import os

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")  # Celery broker
# The channel layer's shards (bench/run.py --shards N): one URL, or several comma-separated.
CHANNEL_REDIS_URLS = os.environ.get("BENCH_CHANNEL_REDIS_URL", REDIS_URL).split(",")
CHANNEL_REDIS_URL = CHANNEL_REDIS_URLS[0]
DB_PATH = os.environ.get("BENCH_DB", "/tmp/turbo_tasks_bench.sqlite3")

SECRET_KEY = "bench-secret-key-not-for-production"
DEBUG = False  # DEBUG=True would record every query
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "turbo_tasks",
    "turbo",  # turbo-django 0.4.4, the synchronous reference
    "bench.benchapp",
    "bench.tdapp",
]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "bench.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": []},
    }
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": DB_PATH,
        # WAL: the worker reads while the producer writes. The file lives on tmpfs when
        # available (see bench/run.py), so commits measure Python, not fsync.
        "OPTIONS": {
            "timeout": 30,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
        },
    }
}

ASGI_APPLICATION = "bench.asgi.application"


def channel_layers(urls: list[str]) -> dict:
    """CHANNEL_LAYERS on ``urls``, one ``hosts`` entry (shard) each; bench/run.py also calls it
    when it switches the number of shards (--scale-out)."""
    return {
        "default": {
            # bench/run.py --layer: RedisChannelLayer (default) or RedisPubSubChannelLayer
            "BACKEND": os.environ.get(
                "BENCH_CHANNEL_LAYER", "channels_redis.core.RedisChannelLayer"
            ),
            "CONFIG": {"hosts": [{"address": url, "socket_timeout": 15} for url in urls]},
        }
    }


CHANNEL_LAYERS = channel_layers(CHANNEL_REDIS_URLS)

# As docs/howto/operations.md tells users to configure Celery.
CELERY_BROKER_URL = REDIS_URL
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "socket_timeout": 5,
    "socket_connect_timeout": 5,
    "visibility_timeout": 300,
    "unacked_restore_interval": 5,
    "unacked_restore_throttle": 1,
}
NAIVE_QUEUE = "bench_naive"
CELERY_TASK_ROUTES = ("turbo_tasks.tasks.route", {"bench.*": {"queue": NAIVE_QUEUE}})
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_DB_REUSE_MAX = 100

# Defaults (direct publish mode, queue "turbo_tasks", catch-up on); bench/run.py switches
# catch-up off for the "nohistory" variants with BENCH_TURBO_TASKS='{"HISTORY_LENGTH": 0}'.
TURBO_TASKS: dict = json.loads(os.environ.get("BENCH_TURBO_TASKS") or "{}")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
CELERY_DB_REUSE_MAX = 1000
