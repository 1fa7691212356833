"""Django settings, read from the environment.

Variables come from the process environment and from ``.env`` in the project directory (if it
exists); the process environment wins. ``.env.example`` lists every variable. The defaults are the
production-safe ones: DEBUG is off, SECRET_KEY is required, and the HTTPS-only protections are on
unless DEBUG is on.
"""

import ipaddress
from pathlib import Path

import environ
from csp.constants import NONCE, NONE, SELF
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def networks(name: str, default: list[str]) -> list[str]:
    """A comma-separated list of CIDRs; a malformed one stops the start, not every request later."""
    values: list[str] = env.list(name, default=default)
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError as error:
            raise ImproperlyConfigured(f"{name}: {error}.") from None
    return values


env = environ.Env()
# Does nothing when the file is absent (containers, CI): then only the real environment counts.
environ.Env.read_env(BASE_DIR / ".env")

DEBUG = env.bool("DEBUG", default=False)

SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. Set it in the environment or in .env to a long random value, "
            'e.g. the output of: python -c "import secrets; print(secrets.token_urlsafe(50))". '
            "Only DEBUG=true (local development) runs without one."
        )
    # Local development only: a fixed key keeps sessions valid across restarts.
    SECRET_KEY = "django-insecure-local-development-only"

# Rotating the key: put the old one here until every process runs with the new one (sessions,
# signed values and the event ids of Redis messages stay valid meanwhile).
SECRET_KEY_FALLBACKS = env.list("SECRET_KEY_FALLBACKS", default=[])

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    # First, so that `manage.py runserver` is Daphne's ASGI server: event streams need ASGI.
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "csp",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # the API docs page's files, served by this site
    "{{ cookiecutter.project_slug }}.events",
{%- if cookiecutter.include_demo %}
    "{{ cookiecutter.project_slug }}.demo",
{%- endif %}
]

# No GZipMiddleware: compressing an event stream buffers it, and events arrive late or never.
MIDDLEWARE = [
    # Before anything reads the client's address: REMOTE_ADDR from TRUSTED_PROXIES only.
    "{{ cookiecutter.project_slug }}.security.proxies.TrustedProxyMiddleware",
    # Next: every later log line of the request carries its request id.
    "{{ cookiecutter.project_slug }}.observability.logs.RequestContextMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Answers 429 for a sign-in refused over a login rate (security/login_throttle.py).
    "{{ cookiecutter.project_slug }}.security.login_throttle.LoginRateMiddleware",
    # After authentication: it asks whether the response is for a signed-in user.
    "{{ cookiecutter.project_slug }}.security.middleware.PrivateCacheControlMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Without DATABASE_URL: an SQLite file in the project directory, so nothing else is needed to start.
DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
}
# PostgreSQL: each process keeps a pool of connections, rather than opening one for every request
# (a new server process on PostgreSQL's side, and its authentication, per request and per stream
# accepted). Persistent connections (CONN_MAX_AGE) are no option under ASGI, where a request's
# sync code runs in a thread of its own; Django documents a pool for it. 0 turns the pool off.
DATABASE_POOL_MAX_SIZE = env.int("DATABASE_POOL_MAX_SIZE", default=4)
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and DATABASE_POOL_MAX_SIZE:
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": DATABASE_POOL_MAX_SIZE,
        # A request waits this long for a connection while all are in use (or while the database
        # is unreachable), then fails: /readyz must answer within its probes' timeouts (3 s).
        "timeout": env.float("DATABASE_POOL_TIMEOUT", default=2.0),
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_REDIRECT_URL = "/"
# Sign-in attempts, right or wrong, per account and per client address, over every process (rates
# such as "10/min"; empty = no limit). Over one: 429 with Retry-After, the right password included,
# until the window has passed (docs/security.md). Many people can share an address.
LOGIN_RATE = env.str("LOGIN_RATE", default="10/min")
LOGIN_ADDRESS_RATE = env.str("LOGIN_ADDRESS_RATE", default="100/min")
# Django's ModelBackend, stopping an attempt over a rate before its password is checked.
AUTHENTICATION_BACKENDS = ["{{ cookiecutter.project_slug }}.security.login_throttle.LoginRateBackend"]

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Programs send a token; browsers (EventSource cannot send headers) the session cookie.
        # Token first: DRF then answers unauthenticated requests 401 with a WWW-Authenticate
        # header, rather than 403.
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # One error shape for every refusal: {"detail", "code", "errors"} (events/api/errors.py).
    "EXCEPTION_HANDLER": "{{ cookiecutter.project_slug }}.events.api.errors.api_exception_handler",
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "{{ cookiecutter.project_slug }}.events.api.negotiation.FormatNegotiation",
    # The API takes JSON, nested at most 64 deep; any other body is a 415.
    "DEFAULT_PARSER_CLASSES": ["{{ cookiecutter.project_slug }}.events.api.parsers.EventJSONParser"],
    # Anonymous throttles key on REMOTE_ADDR, which TrustedProxyMiddleware set; by default DRF
    # would take X-Forwarded-For whole, as the client wrote it.
    "NUM_PROXIES": 0,
}
# The API's OpenAPI schema (GET /api/schema/) and its docs page (/api/docs/: DEBUG or staff).
SPECTACULAR_SETTINGS = {
    "TITLE": {{ (cookiecutter.project_name ~ " API") | tojson }},
    "DESCRIPTION": "Server-Sent Events and publishing: see docs/events.md.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "{{ cookiecutter.project_slug }}.events.api.schema.link_tickets_to_the_stream",
    ],
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="{{ cookiecutter.timezone }}")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

# Content-Security-Policy (django-csp): the browser runs, styles, loads and submits only what comes
# from this site. An inline <script> or <style> runs only if it carries the response's nonce (the
# template variable request.csp_nonce), so markup injected into a page does not; inline style=
# attributes never apply. To allow another origin (a CDN, say), add it to the directive that needs
# it, e.g. "script-src": [SELF, NONCE, "https://cdn.example.net"] (see docs/deployment.md).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF, NONCE],
        "style-src": [SELF, NONCE],
        # data: for the demo page's empty favicon, which spares a request for /favicon.ico.
        "img-src": [SELF, "data:"],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}

# HTTPS. TLS ends at the reverse proxy, which tells Django the original scheme in this header.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
# Probes call the app over plain HTTP from inside the network; a redirect would fail them.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not DEBUG)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 60 * 60 * 24 * 365)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=True)

LOG_LEVEL = env.str("LOG_LEVEL", default="INFO").upper()
# "plain" for people, "json" (one object per line) for a log store.
LOG_FORMAT = env.str("LOG_FORMAT", default="plain")
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be plain or json, not {LOG_FORMAT!r}.")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "{asctime} {levelname} {name}: {message}", "style": "{"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            # Besides these, whatever a line adds (stream_id, event_id, reason...) is a field.
            "fmt": "{asctime}{levelname}{name}{message}{request_id}{user_id}",
            "style": "{",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
            "timestamp": False,
        },
    },
    "filters": {
        "request_context": {"()": "{{ cookiecutter.project_slug }}.observability.logs.RequestContextFilter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["request_context"],
        },
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Django's own console handler would print its records a second time.
        "django": {"handlers": [], "level": LOG_LEVEL},
    },
}

# Event stream. Without REDIS_URL the broker lives inside this one process (fine for a single
# Daphne process); with it, any number of processes and hosts share events and their history.
# redis+sentinel://host:port[,host:port...]/<service>[/<db>] reaches the master Redis Sentinel
# names (docs/deployment.md). Read when first used: a malformed URL fails `manage.py check`
# (events.E003), not this import.
REDIS_URL = env.str("REDIS_URL", default="")
EVENTS_HEARTBEAT_SECONDS = env.float("EVENTS_HEARTBEAT_SECONDS", default=15.0)
EVENTS_RETRY_MILLISECONDS = env.int("EVENTS_RETRY_MILLISECONDS", default=3000)
EVENTS_HISTORY_LENGTH = env.int("EVENTS_HISTORY_LENGTH", default=10000)
# Partitions of history (docs/events.md): each its own order, spread over a Redis Cluster's nodes.
# One keeps plain ids; changing it makes every client reset once.
EVENTS_PARTITIONS = env.int("EVENTS_PARTITIONS", default=1)
EVENTS_MAX_PAYLOAD_BYTES = env.int("EVENTS_MAX_PAYLOAD_BYTES", default=65536)
EVENTS_MAX_TOPICS_PER_STREAM = env.int("EVENTS_MAX_TOPICS_PER_STREAM", default=16)
EVENTS_CLIENT_QUEUE_SIZE = env.int("EVENTS_CLIENT_QUEUE_SIZE", default=1000)
# A client's unsent bytes may pass EVENTS_CLIENT_MAX_BACKLOG_BYTES for at most
# EVENTS_CLIENT_SEND_TIMEOUT_SECONDS; then it is cut off and resumes by id when it reads again.
EVENTS_CLIENT_MAX_BACKLOG_BYTES = env.int("EVENTS_CLIENT_MAX_BACKLOG_BYTES", default=1048576)
EVENTS_CLIENT_SEND_TIMEOUT_SECONDS = env.float("EVENTS_CLIENT_SEND_TIMEOUT_SECONDS", default=10.0)
# A silent Pub/Sub connection is PINGed after this long, and replaced if the PONG takes as long.
EVENTS_REDIS_HEALTH_CHECK_SECONDS = env.float("EVENTS_REDIS_HEALTH_CHECK_SECONDS", default=3.0)
# On SIGTERM (Daphne): streams end with a retry spread over this window, then the process waits
# at most the grace period for those last bytes to leave.
EVENTS_SHUTDOWN_RECONNECT_WINDOW_SECONDS = env.float(
    "EVENTS_SHUTDOWN_RECONNECT_WINDOW_SECONDS", default=10.0
)
EVENTS_SHUTDOWN_GRACE_SECONDS = env.float("EVENTS_SHUTDOWN_GRACE_SECONDS", default=3.0)
# 0 = streams never end on the server's initiative.
EVENTS_STREAM_MAX_SECONDS = env.float("EVENTS_STREAM_MAX_SECONDS", default=3600.0)
EVENTS_REDIS_PREFIX = env.str("EVENTS_REDIS_PREFIX", default="events")
EVENTS_CORS_ALLOWED_ORIGINS = env.list("EVENTS_CORS_ALLOWED_ORIGINS", default=[])
# Topics every signed-in user may read: shell-style patterns ("news", "news.*"). Any other topic
# is denied unless EVENTS_TOPIC_AUTHORIZER allows it; staff.* topics are for staff only.
EVENTS_PUBLIC_TOPICS = env.list("EVENTS_PUBLIC_TOPICS", default=[{% if cookiecutter.include_demo %}"demo"{% endif %}])
# Who may read which topic: a dotted path to a function (see docs/events.md).
EVENTS_TOPIC_AUTHORIZER = "{{ cookiecutter.project_slug }}.events.access.topics.default_topic_authorizer"
# Limits per user, over every process: open streams (0 = no limit), and new streams and publishes
# per minute (DRF throttle rates such as "60/min"; empty = no limit). Over a limit: 429 with
# Retry-After and a JSON reason.
EVENTS_MAX_STREAMS_PER_USER = env.int("EVENTS_MAX_STREAMS_PER_USER", default=8)
EVENTS_STREAM_RATE = env.str("EVENTS_STREAM_RATE", default="60/min")
EVENTS_PUBLISH_RATE = env.str("EVENTS_PUBLISH_RATE", default="600/min")
# How long a stream ticket (POST /api/events/tickets/) opens streams, in seconds.
EVENTS_TICKET_SECONDS = env.int("EVENTS_TICKET_SECONDS", default=30)
# How long an idempotency key (Idempotency-Key header, publish(key=...)) is remembered, in seconds.
EVENTS_IDEMPOTENCY_SECONDS = env.int("EVENTS_IDEMPOTENCY_SECONDS", default=86400)
# With a Redis replica (Sentinel, a managed Redis with failover): a publish is acknowledged only
# once this many replicas hold it (Redis's WAIT), within the timeout; otherwise it answers 503
# "may or may not have been published". 0: acknowledged once the master stored it (a failover
# then may lose the newest events: clients get a reset for those a server had received, and miss
# the others). See docs/deployment.md.
EVENTS_PUBLISH_REPLICAS = env.int("EVENTS_PUBLISH_REPLICAS", default=0)
EVENTS_PUBLISH_REPLICA_TIMEOUT_MILLISECONDS = env.int(
    "EVENTS_PUBLISH_REPLICA_TIMEOUT_MILLISECONDS", default=1000
)

# The proxies in front of this server (CIDRs; empty: none): from them only, X-Forwarded-For and
# X-Forwarded-Proto are believed, read from the right (security/proxies.py). compose.yaml and the
# Kubernetes config name their nginx / ingress networks.
TRUSTED_PROXIES = networks("TRUSTED_PROXIES", default=["127.0.0.1/32", "::1/128"])

# GET /metrics (Prometheus): for requests with "Authorization: Bearer <METRICS_TOKEN>" (empty: no
# token is accepted), or from these networks. The public nginx server does not proxy it.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
METRICS_ALLOWED_NETWORKS = networks("METRICS_ALLOWED_NETWORKS", default=["127.0.0.0/8", "::1/128"])

# The cache holds the revoked credentials that stream tickets are checked against: in Redis when
# REDIS_URL is set, so that every process sees the same; otherwise in this process's memory.
# Short socket timeouts: a frozen Redis must not hang requests.
if REDIS_URL:
    CACHES = {
        "default": {
            # Django's Redis cache, minus a client built per operation.
            "BACKEND": "{{ cookiecutter.project_slug }}.events.broker.redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": f"{EVENTS_REDIS_PREFIX}:cache",
            "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 2},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
