from django.urls import path

from tests.testapp import views

urlpatterns = [
    path("messages/", views.post_message, name="post-message"),
]
