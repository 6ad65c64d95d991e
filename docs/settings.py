"""The smallest Django settings that let Sphinx import turbo_tasks for autodoc.

Nothing here connects anywhere: no broker, no Redis, no database file. Kept apart from
tests/settings.py so that building the docs needs neither the test suite nor its services.
"""

SECRET_KEY = "docs-only-not-secret"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "turbo_tasks",
]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [{"address": "redis://127.0.0.1:6379/0", "socket_timeout": 15}]},
    }
}
