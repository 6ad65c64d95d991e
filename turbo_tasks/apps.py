from __future__ import annotations

from django.apps import AppConfig


class TurboTasksConfig(AppConfig):
    name = "turbo_tasks"
    verbose_name = "Turbo Tasks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from turbo_tasks import checks, signals, streams

        checks.register()
        streams.autodiscover()
        signals.connect_receivers(streams.registry.model_streams())
