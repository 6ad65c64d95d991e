from django.urls import path

from . import views

app_name = "chat"
urlpatterns = [
    path("", views.room_list, name="room_list"),
    path("rooms/<int:pk>/", views.room_detail, name="room"),
    path("rooms/<int:pk>/messages/", views.post_message, name="post_message"),
    path("messages/<int:pk>/edit/", views.edit_message, name="edit_message"),
    path("messages/<int:pk>/delete/", views.delete_message, name="delete_message"),
]
