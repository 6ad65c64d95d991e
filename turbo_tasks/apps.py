from __future__ import annotations

from django.apps import AppConfig


class TurboTasksConfig(AppConfig):
    name = "turbo_tasks"
    verbose_name = "Turbo Tasks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # tasks: declare turbo_tasks.deliver (a shared_task) in every process that runs
        # Django, so any Celery app finalized here has it, not only apps that autodiscover
        # (pytest-celery's in-process worker app, a project's second app).
        from turbo_tasks import checks, registry, signals, tasks  # noqa: F401

        checks.register()
        registry.autodiscover()
        signals.connect_receivers()
