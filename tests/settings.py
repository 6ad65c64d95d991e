"""Settings for the test suite, its worker and its ASGI server.

The Redis port and the SQLite file (or, with TURBO_TEST_DATABASE=postgres, the PostgreSQL
port) are chosen once per run and put in the environment, so the worker and ASGI
subprocesses the tests start use the same ones.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from scripts.procs import free_port

REDIS_PORT = int(os.environ.setdefault("TURBO_TEST_REDIS_PORT", str(free_port())))
REDIS_URL = f"redis://127.0.0.1:{REDIS_PORT}/0"
DB_PATH = os.environ.setdefault(
    "TURBO_TEST_DB", str(Path(tempfile.gettempdir()) / f"turbo_tasks_test_{REDIS_PORT}.sqlite3")
)

# The fault tests run their worker and ASGI server with a channel-layer Redis of their own
# (one they can stop), a short visibility timeout and quick retries; the sharding test with
# two (comma-separated URLs).
CHANNEL_REDIS_URL = os.environ.get("TURBO_TEST_CHANNEL_REDIS_URL", REDIS_URL)
TURBO_TASKS = json.loads(os.environ.get("TURBO_TEST_TURBO_TASKS", "{}"))
VISIBILITY_TIMEOUT = int(os.environ.get("TURBO_TEST_VISIBILITY_TIMEOUT", "300"))

# TURBO_TEST_SECRET_KEY: a process with another key (tests/test_status.py).
SECRET_KEY = os.environ.get("TURBO_TEST_SECRET_KEY", "test-secret-key-not-for-production")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.staticfiles",
    "turbo_tasks",
    "tests.testapp",
    "tests.otherapp",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "turbo_tasks.middleware.TurboTasksMiddleware",
]
ROOT_URLCONF = "tests.urls"
STATIC_URL = "/static/"
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
        "TEST": {"NAME": DB_PATH},
        "OPTIONS": {"timeout": 30},
    },
    "other": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": DB_PATH + ".other",
        "TEST": {"NAME": DB_PATH + ".other"},
        "OPTIONS": {"timeout": 30},
    },
}

# TURBO_TEST_DATABASE=postgres: the same two aliases on a private PostgreSQL cluster that
# tests/conftest.py starts (tests/postgres.py) on this port. The test databases keep their
# names (TEST NAME), so the worker and ASGI subprocesses use them as they are.
DATABASE = os.environ.get("TURBO_TEST_DATABASE", "sqlite")
if DATABASE == "postgres":
    PG_PORT = int(os.environ.setdefault("TURBO_TEST_PG_PORT", str(free_port())))
    DATABASES = {
        alias: {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": name,
            "USER": "postgres",
            "HOST": "127.0.0.1",
            "PORT": str(PG_PORT),
            "TEST": {"NAME": name},
        }
        for alias, name in [("default", "turbo_tasks"), ("other", "turbo_tasks_other")]
    }
elif DATABASE != "sqlite":
    raise ValueError(f"TURBO_TEST_DATABASE={DATABASE!r}: use sqlite or postgres")

ASGI_APPLICATION = "tests.asgi.application"
# TURBO_TEST_DOCS_CHANNEL_LAYER=1: the configuration the Channels docs show (no socket
# timeout), which turbo_tasks must survive as it is.
_DOCS_LAYER = os.environ.get("TURBO_TEST_DOCS_CHANNEL_LAYER") == "1"
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        # redis-py 8 times sockets out after 5 s, as long as channels_redis blocks on a
        # receive: raise it (turbo_tasks.W005; turbo_tasks also copes without).
        "CONFIG": {
            "hosts": [
                {"address": url, "socket_timeout": 15} for url in CHANNEL_REDIS_URL.split(",")
            ]
        },
    }
}
if _DOCS_LAYER:
    CHANNEL_LAYERS["default"]["CONFIG"] = {
        "hosts": [("127.0.0.1", urlsplit(CHANNEL_REDIS_URL).port)]
    }
# TURBO_TEST_CHANNEL_LAYER=pubsub: channels_redis' RedisPubSubChannelLayer on the same hosts
# (tests/test_pubsub.py starts its worker and ASGI server with it). Its receive loop reads
# with 0.1 s timeouts, so redis-py's 5 s socket timeout never fires on an idle socket there;
# the 15 s above stays only so both layers get the same hosts.
PUBSUB_LAYER = "channels_redis.pubsub.RedisPubSubChannelLayer"
CHANNEL_LAYER_KIND = os.environ.get("TURBO_TEST_CHANNEL_LAYER", "core")
if CHANNEL_LAYER_KIND == "pubsub":
    CHANNEL_LAYERS["default"]["BACKEND"] = PUBSUB_LAYER
elif CHANNEL_LAYER_KIND != "core":
    raise ValueError(f"TURBO_TEST_CHANNEL_LAYER={CHANNEL_LAYER_KIND!r}: use core or pubsub")

# TURBO_TEST_BROKER_URL: another broker for the worker and Flower the test starts, e.g.
# RabbitMQ (tests/test_rabbitmq.py), the channel layer staying on Redis. The transport
# options below are the Redis transport's own: kombu's amqp transport takes none of them.
CELERY_BROKER_URL = os.environ.get("TURBO_TEST_BROKER_URL", REDIS_URL)
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {
    "socket_timeout": 5,
    "socket_connect_timeout": 5,
    "visibility_timeout": VISIBILITY_TIMEOUT,
    # Sweep for messages of dead workers every second (kombu's default: ~100 s).
    "unacked_restore_interval": 1,
    "unacked_restore_throttle": 1,
}
if CELERY_BROKER_URL.startswith(("amqp://", "amqps://", "pyamqp://")):
    CELERY_BROKER_TRANSPORT_OPTIONS = {}
# TURBO_TEST_SENTINEL_MASTER: the master a sentinel:// broker URL asks Sentinel for
# (tests/test_sentinel.py).
if CELERY_BROKER_URL.startswith("sentinel://"):
    CELERY_BROKER_TRANSPORT_OPTIONS["master_name"] = os.environ["TURBO_TEST_SENTINEL_MASTER"]
CELERY_TASK_ROUTES = ("turbo_tasks.tasks.route",)
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_DB_REUSE_MAX = 100

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"turbo_tasks": {"handlers": ["console"], "level": "DEBUG"}},
}
