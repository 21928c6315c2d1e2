from django.urls import path

from client_site.web import views

urlpatterns = [
    path("health", views.health, name="health"),
]
