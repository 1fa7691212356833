"""Content negotiation: DRF's, except that a ``?format=`` no renderer has is a 406 (the resource
is there, not in that format) rather than a 404 the schema could not document."""

from collections.abc import Iterable

from rest_framework.exceptions import NotAcceptable
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BaseRenderer


class FormatNegotiation(DefaultContentNegotiation):
    def filter_renderers(
        self, renderers: Iterable[BaseRenderer], format: str
    ) -> list[BaseRenderer]:
        renderers = list(renderers)
        matching = [renderer for renderer in renderers if renderer.format == format]
        if not matching:
            formats = ", ".join(renderer.format for renderer in renderers)
            raise NotAcceptable(f"No such format here: use one of {formats}.")
        return matching
