"""Settings of the example chat site, read from the environment.

| variable | default |
|---|---|
| ``REDIS_URL`` | ``redis://127.0.0.1:6379/0`` (Celery broker and channel layer) |
| ``DATABASE_URL`` | SQLite at ``example/db.sqlite3`` (any dj-database-url URL, e.g. PostgreSQL) |
| ``DEBUG`` | on |
| ``SECRET_KEY`` | a development key |
| ``ALLOWED_HOSTS`` | ``localhost,127.0.0.1`` |
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent


def _flag(name: str, default: str) -> bool:
    return os.environ.get(name, default).strip().lower() in ("1", "true", "yes", "on")


DEBUG = _flag("DEBUG", "1")
SECRET_KEY = os.environ.get("SECRET_KEY", "django-insecure-turbo-tasks-example-only")
ALLOWED_HOSTS = [
    host.strip()
    for host in os.environ.get("ALLOWED_HOSTS", "localhost,127.0.0.1").split(",")
    if host.strip()
]
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "turbo_tasks",
    "example.chat",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Which page (socket) a request came from: the author's own tab is spared its message.
    "turbo_tasks.middleware.TurboTasksMiddleware",
]

ROOT_URLCONF = "example.urls"
ASGI_APPLICATION = "example.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    }
]

if os.environ.get("DATABASE_URL"):
    DATABASES = {"default": dj_database_url.parse(os.environ["DATABASE_URL"])}
else:
    DATABASES = {
        "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db.sqlite3"}
    }
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web server and the worker write to the same file: wait for each other's locks.
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 20

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "chat:room_list"
LOGOUT_REDIRECT_URL = "login"

# The demo runs uvicorn without a web server in front: example.asgi serves these itself.
STATIC_URL = "/static/"
# Turbo comes from npm (`npm install` in example/, done by `make install`).
STATICFILES_DIRS = [BASE_DIR / "node_modules" / "@hotwired" / "turbo" / "dist"]

CHANNEL_LAYERS = {
    "default": {
        # Or channels_redis.pubsub.RedisPubSubChannelLayer: catch-up works on both.
        "BACKEND": os.environ.get("CHANNEL_LAYER_BACKEND", "channels_redis.core.RedisChannelLayer"),
        # redis-py 8 times sockets out after 5 s, exactly as long as channels_redis blocks
        # waiting for a message: set a longer timeout (check W005; turbo_tasks copes without).
        "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 15}]},
    }
}

CELERY_BROKER_URL = REDIS_URL
CELERY_BROKER_TRANSPORT_OPTIONS = {
    # The publish runs in the request's commit: never let it hang on a dead broker.
    "socket_timeout": 5,
    "socket_connect_timeout": 5,
    # Unacknowledged broadcasts come back after this long if a worker is killed.
    "visibility_timeout": 300,
}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True  # the demo starts Redis alongside
CELERY_TASK_ROUTES = ("turbo_tasks.tasks.route",)  # turbo_tasks.deliver → its queue
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_DB_REUSE_MAX = 100  # reuse the worker DB connection 100 times (docs/howto/operations.md)
