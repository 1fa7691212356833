"""One log line per request: who asked what, and the answer's status.

It replaces Daphne's and gunicorn's own access logs (turned off where they are started), which
write the request line whole: a stream ticket (``?ticket=``) opens streams until it expires, so it
must never reach a log. Here it is written ``ticket=[hidden]``. The line carries the request id
and the user id like every other (``logs.py``); the client is the address ``security/proxies.py``
settled on.
"""

import logging
import re

from django.http import HttpRequest, HttpResponseBase

logger = logging.getLogger(__name__)

# The query parameters whose values are secrets: the stream ticket (events/access/tickets.py).
_SECRET_PARAMETER = re.compile(r"(^|&)(ticket=)[^&]*")


def loggable_query(query: str) -> str:
    return _SECRET_PARAMETER.sub(r"\1\2[hidden]", query)


def log_request(request: HttpRequest, response: HttpResponseBase) -> None:
    query = request.META.get("QUERY_STRING", "")
    target = request.path + ("?" + loggable_query(query) if query else "")
    logger.info(
        '%s "%s %s" %s',
        request.META.get("REMOTE_ADDR", "-"),
        request.method,
        target,
        response.status_code,
        extra={"client": request.META.get("REMOTE_ADDR"), "status": response.status_code},
    )
