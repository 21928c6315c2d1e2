"""Keeps login tokens out of the access log.

A master's login link is ``/sso/login?token=...`` (reactive/sso.py), and uvicorn's access log writes every
request's path with its query string: whoever reads the logs (a log pipeline, a support export) could
replay a link not yet used. The filter rewrites the value of each secret query parameter to
``[redacted]``, keeping the rest of the line.

It is added to the loggers themselves, not through LOGGING: a dictConfig naming ``uvicorn.access`` would
replace the handlers uvicorn gave it. A logger's filters see only the records logged on that logger,
which is where uvicorn (and runserver's ``django.server``) log their request lines.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote_plus

SECRET_PARAMETERS = frozenset({"token"})
REDACTED = "[redacted]"
LOGGERS = ("uvicorn.access", "django.server")
# One name=value pair of a query string (after "?", "&" or ";"); a request line ends it at a space.
_PAIR = re.compile(r"(?P<lead>[?&;])(?P<name>[^=&;#\s]+)=(?P<value>[^&;#\s]*)")


def redact(text: str) -> str:
    """``text`` with the values of secret query parameters replaced; anything else as it was."""
    head, mark, query = text.partition("?")
    if not mark:
        return text

    def hide(pair: re.Match[str]) -> str:
        # Decoded as Django decodes it: "?tok%65n=..." is request.GET["token"] too.
        if unquote_plus(pair["name"]) in SECRET_PARAMETERS:
            return f"{pair['lead']}{pair['name']}={REDACTED}"
        return pair[0]

    return head + _PAIR.sub(hide, mark + query)


class RedactTokens(logging.Filter):
    """Redacts secret query parameters in a record's string arguments (uvicorn's full path is one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(isinstance(arg, str) and "?" in arg for arg in args):
            record.args = tuple(redact(arg) if isinstance(arg, str) else arg for arg in args)
        elif not args and isinstance(record.msg, str) and "?" in record.msg:
            record.msg = redact(record.msg)
        return True


def install(names: tuple[str, ...] = LOGGERS) -> None:
    """Add the filter to the access loggers, once each however often the app is set up."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, RedactTokens) for existing in logger.filters):
            logger.addFilter(RedactTokens())
