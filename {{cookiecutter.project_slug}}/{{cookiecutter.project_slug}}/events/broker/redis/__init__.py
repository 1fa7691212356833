"""The Redis broker: history in capped Redis streams, live delivery over Pub/Sub.

``connection.py`` holds what the others share (keys, clients, scripts, the history pager),
``history.py`` reads history, ``broker.py`` publishes, ``feed.py`` is a process's one Pub/Sub
connection, ``slots.py`` the open-streams limit, ``rates.py`` the rate limits, ``signing.py`` the
ids the publish script signs, and ``cache.py`` Django's Redis cache (for revoked credentials).
``urls.py`` reads ``REDIS_URL``: one Redis server, or Redis Sentinel, whose master ``sentinel.py``
connects to.
"""
