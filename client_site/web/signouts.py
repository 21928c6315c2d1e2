"""A sign-out ends that browser session's open sockets (user and clock), not only its HTTP requests.

A socket is authenticated once, at its handshake: without this, a page left open in another tab of the
signed-out session would go on receiving the user's changes. Django sends ``user_logged_out`` from every
logout (this site's, the admin's) before it flushes the session, so the session key is still known here.
"""

from __future__ import annotations

from typing import Any

from reactive import groups


def announce(sender: Any, request: Any = None, user: Any = None, **_: Any) -> None:
    session_key = getattr(getattr(request, "session", None), "session_key", None)
    if user is None or not session_key:
        return
    # A channel layer that is down is logged by send_sync; the sign-out itself goes on regardless. The
    # user's group reaches their user sockets; ENDED_ACCOUNTS reaches every process's clock fan-out.
    message = groups.session_ended_message(user.pk, session_key)
    if groups.send_sync(groups.user_group(user.pk), message):
        groups.send_sync(groups.ENDED_ACCOUNTS, message)
