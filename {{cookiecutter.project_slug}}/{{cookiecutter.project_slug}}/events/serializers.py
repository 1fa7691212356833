from typing import Any

from django.contrib.auth import get_user_model
from rest_framework import serializers

from .channels import validate_topic
from .event import validate_type
from .exceptions import InvalidEvent


class PublishEventSerializer(serializers.Serializer):
    type = serializers.CharField(default="message", max_length=64)
    data = serializers.JSONField(allow_null=True)
    user = serializers.PrimaryKeyRelatedField(
        queryset=get_user_model().objects.all(), required=False, allow_null=True
    )
    topic = serializers.CharField(required=False, allow_null=True, max_length=64)

    def validate_type(self, value: str) -> str:
        return _checked(validate_type, value)

    def validate_topic(self, value: str | None) -> str | None:
        return None if value is None else _checked(validate_topic, value)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("user") is not None and attrs.get("topic") is not None:
            raise serializers.ValidationError("Send an event to one user or one topic, not both.")
        return attrs


def _checked(validator: Any, value: str) -> str:
    try:
        return validator(value)
    except InvalidEvent as error:
        raise serializers.ValidationError(str(error)) from error
