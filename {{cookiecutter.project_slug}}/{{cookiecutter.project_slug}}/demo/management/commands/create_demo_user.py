from argparse import ArgumentParser
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

USERNAME = "demo"
PASSWORD = "demo"


class Command(BaseCommand):
    help = (
        f"Create (or reset) the superuser {USERNAME!r} with password {PASSWORD!r} to try the "
        "demo page. Refused when DEBUG is off, unless --force is given."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--force",
            action="store_true",
            help="Create the user even though DEBUG is off. Never do this on a public server.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        # Everybody knows this password: outside development it is a way in.
        if not settings.DEBUG and not options["force"]:
            raise CommandError(
                f"DEBUG is off: refusing to create a superuser whose password is {PASSWORD!r}. "
                "Use --force if this server is not reachable by anyone else."
            )
        user_model = get_user_model()
        lookup: dict[str, Any] = {user_model.USERNAME_FIELD: USERNAME}
        user, created = user_model._default_manager.get_or_create(**lookup)
        user.is_active = True
        user.is_staff = True
        user.is_superuser = True  # superusers hold every permission, publishing events included
        user.set_password(PASSWORD)
        user.save()
        action = "Created" if created else "Reset"
        self.stdout.write(
            self.style.SUCCESS(f"{action} the superuser {USERNAME!r}.")
            + f"\nLog in at /accounts/login/ with username {USERNAME!r} and password {PASSWORD!r}."
        )
