from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from example.chat.views import LoginView

urlpatterns = [
    path("", include("example.chat.urls")),
    path("accounts/login/", LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
]
