from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from ..core.channels import NAME, validate_topic
from ..core.event import RESET_TYPE, REVOKED_TYPE, validate_type
from ..exceptions import InvalidEvent

# What the schema says a topic and a type are, so that a client (or a fuzzer) knows before asking.
NAME_SCHEMA = {"type": "string", "pattern": f"^{NAME.pattern}$"}


class _NameField(serializers.CharField):
    """A name that ``rule`` checks once DRF's own checks (length, NUL, surrogates) pass; only a
    JSON string is one (CharField would take a number as its text). trim_whitespace=False:
    "news\n" is refused, not published to "news"."""

    def __init__(self, rule: Callable[[str], str], **kwargs: Any) -> None:
        super().__init__(max_length=64, trim_whitespace=False, **kwargs)
        self._rule = rule

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)

    def run_validators(self, value: Any) -> None:
        super().run_validators(value)  # one reason at a time: the rule only after these pass
        _checked(self._rule, value)


@extend_schema_field(NAME_SCHEMA)
class TopicField(_NameField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(validate_topic, **kwargs)


@extend_schema_field({**NAME_SCHEMA, "not": {"enum": [RESET_TYPE, REVOKED_TYPE]}})
class EventTypeField(_NameField):
    """An event type: a name, other than the server's own types."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(validate_type, **kwargs)


class UserKeyField(serializers.PrimaryKeyRelatedField):  # type: ignore[type-arg]
    """A user's primary key as a JSON number or string; a float (1.5, 1e999) is no one's key."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, bool) or not isinstance(data, int | str):
            self.fail("incorrect_type", data_type=type(data).__name__)
        return super().to_internal_value(data)


class PublishEventSerializer(serializers.Serializer[Any]):
    type = EventTypeField(default="message")
    data = serializers.JSONField(allow_null=True)  # type: ignore[assignment]  # a field, not .data
    user = UserKeyField(queryset=get_user_model().objects.all(), required=False, allow_null=True)
    topic = TopicField(required=False, allow_null=True)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("user") is not None and attrs.get("topic") is not None:
            raise serializers.ValidationError("Send an event to one user or one topic, not both.")
        return attrs


class StreamTicketSerializer(serializers.Serializer[Any]):
    topics = serializers.ListField(
        child=TopicField(), default=list, max_length=settings.EVENTS_MAX_TOPICS_PER_STREAM
    )

    def validate_topics(self, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))


def _checked(validator: Callable[[str], str], value: str) -> str:
    try:
        return validator(value)
    except InvalidEvent as error:
        raise serializers.ValidationError(str(error)) from error
