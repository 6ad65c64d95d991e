from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from example.chat.views import LoginView
from turbo_tasks.views import metrics

urlpatterns = [
    path("", include("example.chat.urls")),
    path("accounts/login/", LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    # Prometheus metrics of the web process (docs/howto/metrics.md). A real site mounts it
    # where only the scraper reaches it, with TURBO_TASKS["METRICS_TOKEN"].
    path("turbo-tasks/metrics", metrics),
]
