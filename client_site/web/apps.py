from django.apps import AppConfig


class WebConfig(AppConfig):
    name = "client_site.web"
    label = "web"
