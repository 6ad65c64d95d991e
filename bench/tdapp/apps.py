from django.apps import AppConfig


class TdAppConfig(AppConfig):
    name = "bench.tdapp"
    label = "tdapp"
