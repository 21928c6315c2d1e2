from django.urls import path

from client_site.web import views

urlpatterns = [
    path("", views.home, name="home"),
    path("clock/", views.clock_page, name="clock"),
    path("api/initial_state", views.initial_state, name="initial_state"),
    path("health", views.health, name="health"),
    path("live", views.live, name="live"),
    path("login/", views.login_page, name="login"),
    path("logout/", views.logout_view, name="logout"),
    path("sso/login", views.sso_login, name="sso_login"),
]
