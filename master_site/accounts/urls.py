from django.contrib.auth import views as auth_views
from django.urls import path

from master_site.accounts import views

urlpatterns = [
    path("", views.clients, name="clients"),
    path("open/<slug:client>/", views.open_client, name="open_client"),
    path("login/", auth_views.LoginView.as_view(next_page="clients"), name="login"),
    path("logout/", auth_views.LogoutView.as_view(next_page="login"), name="logout"),
    path("health", views.health, name="health"),
    path("live", views.live, name="live"),
]
