from django.apps import AppConfig


class WebConfig(AppConfig):
    name = "client_site.web"
    label = "web"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_out

        from client_site.web import redact, signouts

        user_logged_out.connect(signouts.announce, dispatch_uid="reactive.web.sign-out")
        redact.install()  # login links carry their token in the query string, which access logs print
