"""ASGI entry point of the master site (uvicorn master_site.asgi:application).

The liveness route /live is answered by the event loop itself, in front of Django (reactive/health.py).
"""

import os

from django.core.asgi import get_asgi_application

from reactive import settings as reactive_settings
from reactive.health import answer_liveness

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "master_site.settings")
application = get_asgi_application()

if reactive_settings.serve_static():
    # uvicorn serves no static files: Django's own ASGI static handler serves the admin's CSS/JS from the
    # app directories (no collectstatic step, fully async). On under DEBUG; REACTIVE_SERVE_STATIC=1 turns it
    # on where an ingress or CDN does not serve STATIC_ROOT (see docs/operations.md).
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    application = ASGIStaticFilesHandler(application)

application = answer_liveness(application)
