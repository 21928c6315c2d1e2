from django.urls import re_path

from client_site.web import consumers

# Any valid Django username (UnicodeUsernameValidator: letters, digits and @.+-_), trailing slash optional.
# "/ws/" alone is the session user's own room: the page's path (see UserConsumer).
websocket_urlpatterns = [
    re_path(r"^ws/?$", consumers.UserConsumer.as_asgi()),
    re_path(r"^ws/(?P<username>[\w.@+-]{1,150})/?$", consumers.UserConsumer.as_asgi()),
    re_path(r"^time/tic/?$", consumers.ClockConsumer.as_asgi()),
    re_path(r"", consumers.RefuseConsumer.as_asgi()),
]
