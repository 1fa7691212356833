"""Django's default cache, as one instance per process for the event stream's own use.

``django.core.cache.cache`` is an instance per thread and per asyncio context, closed when a
request ends. A stream's request lasts as long as the stream: through it, every open stream would
hold a Redis connection of its own. This instance is shared (Django's Redis cache and its local
memory cache are thread-safe), so the connections stay few however many streams are open.
"""

from functools import cache

from django.core.cache import DEFAULT_CACHE_ALIAS, BaseCache, caches
from django.core.signals import setting_changed
from django.dispatch import receiver


@cache
def shared_cache() -> BaseCache:
    return caches.create_connection(DEFAULT_CACHE_ALIAS)


@receiver(setting_changed)
def _forget_on_new_caches(setting: str, **_: object) -> None:
    if setting == "CACHES":  # tests that override the setting get a cache of the new settings
        shared_cache.cache_clear()
