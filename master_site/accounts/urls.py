from django.urls import path

from master_site.accounts import views

urlpatterns = [
    path("health", views.health, name="health"),
]
