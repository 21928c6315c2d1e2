"""ASGI entry point of a client site (``uvicorn client_site.asgi:application``).

HTTP goes through Django, except the liveness route /live, which the event loop answers itself
(reactive/health.py); websockets through Channels behind the Origin checks (the socket's own origin,
client_site/web/origins.py, whose host ALLOWED_HOSTS lists) and the session auth middleware (Django's
"sessionid" cookie). Sockets that have settled leave CPython's full collections (client_site/web/heap.py).
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "client_site.settings")
django_asgi = get_asgi_application()

# Django must be set up before Channels' auth and the consumers are imported.
from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from client_site.web.broadcast import with_server_send  # noqa: E402
from client_site.web.heap import freeze_settled_sockets  # noqa: E402
from client_site.web.origins import SameOriginValidator  # noqa: E402
from client_site.web.routing import websocket_urlpatterns  # noqa: E402
from reactive import settings as reactive_settings  # noqa: E402
from reactive.health import answer_liveness  # noqa: E402

http_app = django_asgi
if reactive_settings.serve_static():
    # uvicorn serves no files: Django's ASGI static handler serves the page scripts (see master_site/asgi.py).
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    http_app = ASGIStaticFilesHandler(django_asgi)

application = ProtocolTypeRouter(
    {
        "http": answer_liveness(http_app),
        "websocket": freeze_settled_sockets(
            with_server_send(
                SameOriginValidator(
                    AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))
                )
            )
        ),
    }
)
