"""Content negotiation: DRF's, except that a ``?format=`` no renderer has (an empty one included,
which DRF ignores) is a 406 (the resource is there, not in that format) rather than a 404 the
schema could not document."""

from collections.abc import Iterable
from typing import cast

from rest_framework.exceptions import NotAcceptable
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request


class FormatNegotiation(DefaultContentNegotiation):
    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        if not format_suffix and request.query_params.get(self.settings.URL_FORMAT_OVERRIDE) == "":
            self.filter_renderers(renderers, "")  # refuses it
        selected = super().select_renderer(request, renderers, format_suffix)
        return cast(tuple[BaseRenderer, str], selected)

    def filter_renderers(
        self, renderers: Iterable[BaseRenderer], format: str
    ) -> list[BaseRenderer]:
        renderers = list(renderers)
        matching = [renderer for renderer in renderers if renderer.format == format]
        if not matching:
            formats = ", ".join(renderer.format for renderer in renderers)
            raise NotAcceptable(f"No such format here: use one of {formats}.")
        return matching
