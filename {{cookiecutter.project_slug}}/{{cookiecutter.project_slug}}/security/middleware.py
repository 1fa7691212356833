"""Keep what a signed-in user is shown out of every cache."""

from django.http import HttpRequest, HttpResponseBase
from django.utils.deprecation import MiddlewareMixin

PRIVATE_NO_STORE = "private, no-store"


class PrivateCacheControlMiddleware(MiddlewareMixin):
    """``Cache-Control: private, no-store`` on each response to a signed-in user that does not
    say how it may be cached.

    A page or an API answer for a signed-in user holds that user's data: no shared cache (proxy,
    CDN) may keep it for someone else, and the browser should not keep it on disk either (a
    shared computer, after logging out). One middleware covers every such view, the ones added
    later included, where decorators would have to be remembered on each.

    A response that sets its own Cache-Control keeps it: the event stream's ``no-cache``, the
    admin's and the login page's ``never_cache``. Static files never pass through here (nginx,
    or runserver's handler in front of Django, serves them). Users signed in with a DRF token
    count too: DRF puts its user on the Django request when it authenticates one.
    """

    def process_response(
        self, request: HttpRequest, response: HttpResponseBase
    ) -> HttpResponseBase:
        # Cache-Control first: the user lookup may cost a query, and most answers that set their
        # own header (the stream) need none.
        if "Cache-Control" not in response and _signed_in(request):
            response["Cache-Control"] = PRIVATE_NO_STORE
        return response


def _signed_in(request: HttpRequest) -> bool:
    user = getattr(request, "user", None)  # absent if an earlier middleware answered first
    return bool(user is not None and user.is_authenticated)
