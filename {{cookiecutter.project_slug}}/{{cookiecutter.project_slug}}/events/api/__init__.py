"""The HTTP API (Django REST Framework): the stream, ticket, publish and statistics endpoints, the
browser client, their serializers, parsers, renderers, permissions, rate limits and OpenAPI schema.

The top layer: imports ``delivery``, ``publish``, ``access`` and what is below them; nothing
imports it but ``urls``, ``checks`` and the project's URLconf.
"""
