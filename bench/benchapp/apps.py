from django.apps import AppConfig


class BenchAppConfig(AppConfig):
    name = "bench.benchapp"
    label = "benchapp"

    def ready(self) -> None:
        from django.db.models.signals import post_save

        from bench.benchapp import naive
        from bench.benchapp.models import NaiveMessage

        post_save.connect(naive.on_post_save, sender=NaiveMessage, dispatch_uid="bench.naive")
