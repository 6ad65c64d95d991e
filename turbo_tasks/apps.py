from __future__ import annotations

from django.apps import AppConfig


class TurboTasksConfig(AppConfig):
    name = "turbo_tasks"
    verbose_name = "Turbo Tasks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from turbo_tasks import checks, registry, signals

        checks.register()
        registry.autodiscover()
        signals.connect_receivers(registry.registry.model_streams())
