from django.urls import path

from tests.testapp import views
from turbo_tasks.views import metrics

urlpatterns = [
    path("messages/", views.post_message, name="post-message"),
    path("rooms/<int:room_id>/notices/", views.post_notice, name="post-notice"),
    path("turbo-tasks/metrics", metrics, name="turbo-tasks-metrics"),
]
