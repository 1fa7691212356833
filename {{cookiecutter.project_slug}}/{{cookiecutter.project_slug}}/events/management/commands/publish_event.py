import json
from argparse import ArgumentParser
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from ...broker import get_broker
from ...broker.memory import InMemoryBroker
from ...exceptions import EventError
from ...publish import publish


class Command(BaseCommand):
    help = "Publish an event to a user, a topic, or everyone, and print its id."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("type", help="Event type, e.g. 'message' (the SSE 'event:' name).")
        parser.add_argument("data", nargs="?", default="null", help="Event data as JSON.")
        target = parser.add_mutually_exclusive_group()
        target.add_argument("--user", help="Username of the only recipient.")
        target.add_argument("--topic", help="Topic to publish to.")

    def handle(self, *args: Any, **options: Any) -> None:
        if isinstance(get_broker(), InMemoryBroker):
            raise CommandError(
                "REDIS_URL is not set: the in-process broker cannot reach a running server. "
                "Set REDIS_URL, or publish through POST /api/events/."
            )
        try:
            data = json.loads(options["data"])
        except json.JSONDecodeError as error:
            raise CommandError(f"DATA is not valid JSON: {error}") from error
        user = None
        if options["user"]:
            try:
                user = get_user_model().objects.get_by_natural_key(options["user"])
            except get_user_model().DoesNotExist as error:
                raise CommandError(f"No user named {options['user']!r}.") from error
        try:
            event = publish(options["type"], data, user=user, topic=options["topic"])
        except EventError as error:
            raise CommandError(str(error)) from error
        self.stdout.write(event.id or "")
