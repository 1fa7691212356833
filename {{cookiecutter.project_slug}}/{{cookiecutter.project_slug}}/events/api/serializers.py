from collections.abc import Callable
from typing import Any

from django.contrib.auth import get_user_model
from rest_framework import serializers

from ..core.channels import validate_topic
from ..core.event import validate_type
from ..exceptions import InvalidEvent


class UserKeyField(serializers.PrimaryKeyRelatedField):  # type: ignore[type-arg]
    """A user's primary key as a JSON number or string; a float (1.5, 1e999) is no one's key."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, bool) or not isinstance(data, int | str):
            self.fail("incorrect_type", data_type=type(data).__name__)
        return super().to_internal_value(data)


class PublishEventSerializer(serializers.Serializer[Any]):
    # trim_whitespace=False: "news\n" is refused, not published to "news".
    type = serializers.CharField(default="message", max_length=64, trim_whitespace=False)
    data = serializers.JSONField(allow_null=True)  # type: ignore[assignment]  # a field, not .data
    user = UserKeyField(queryset=get_user_model().objects.all(), required=False, allow_null=True)
    topic = serializers.CharField(
        required=False, allow_null=True, max_length=64, trim_whitespace=False
    )

    def validate_type(self, value: str) -> str:
        return _checked(validate_type, value)

    def validate_topic(self, value: str | None) -> str | None:
        return None if value is None else _checked(validate_topic, value)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("user") is not None and attrs.get("topic") is not None:
            raise serializers.ValidationError("Send an event to one user or one topic, not both.")
        return attrs


class StreamTicketSerializer(serializers.Serializer[Any]):
    topics = serializers.ListField(
        child=serializers.CharField(max_length=64, trim_whitespace=False), default=list
    )

    def validate_topics(self, value: list[str]) -> list[str]:
        return list(dict.fromkeys(_checked(validate_topic, topic) for topic in value))


def _checked(validator: Callable[[str], str], value: str) -> str:
    try:
        return validator(value)
    except InvalidEvent as error:
        raise serializers.ValidationError(str(error)) from error
