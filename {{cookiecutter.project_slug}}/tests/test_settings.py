"""Settings come from the environment (and .env); without them, the defaults are production-safe.

Each case loads config/settings.py in a fresh interpreter, in an empty project directory, with only
the variables the case gives: nothing from this machine's environment or .env takes part.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

PROJECT_DIR = Path(__file__).resolve().parent.parent
PRODUCTION = {"SECRET_KEY": "production-" + "k" * 50}
DUMP_SETTINGS = (
    "import json, config.settings as s; "
    "print(json.dumps({k: v for k, v in vars(s).items() if k.isupper()}, default=str))"
)


class SettingsError(Exception):
    pass


def load_settings(directory: Path, dotenv: str | None = None, **environment: str) -> dict[str, Any]:
    (directory / "config").mkdir(parents=True)
    shutil.copy(PROJECT_DIR / "config" / "settings.py", directory / "config" / "settings.py")
    if dotenv is not None:
        (directory / ".env").write_text(dotenv)
    result = subprocess.run(
        [sys.executable, "-B", "-c", DUMP_SETTINGS],
        cwd=directory,
        env={"PATH": os.environ["PATH"], **environment},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise SettingsError(result.stderr)
    return json.loads(result.stdout)


def test_without_configuration_https_protections_are_on(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, **PRODUCTION)
    assert settings["DEBUG"] is False
    assert settings["SECURE_SSL_REDIRECT"] is True
    assert settings["SESSION_COOKIE_SECURE"] is True
    assert settings["CSRF_COOKIE_SECURE"] is True
    assert settings["SECURE_HSTS_SECONDS"] >= 365 * 24 * 60 * 60
    assert settings["ALLOWED_HOSTS"] == ["localhost", "127.0.0.1", "[::1]"]


def test_secret_key_is_required_unless_debug(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="SECRET_KEY is not set"):
        load_settings(tmp_path / "unset")
    with pytest.raises(SettingsError, match="SECRET_KEY is not set"):
        load_settings(tmp_path / "empty", SECRET_KEY="", DEBUG="false")
    assert load_settings(tmp_path / "debug", DEBUG="true")["SECRET_KEY"]


def test_debug_turns_https_protections_off(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, DEBUG="true")
    assert settings["DEBUG"] is True
    assert settings["SECURE_SSL_REDIRECT"] is False
    assert settings["SESSION_COOKIE_SECURE"] is False
    assert settings["CSRF_COOKIE_SECURE"] is False
    assert settings["SECURE_HSTS_SECONDS"] == 0


def test_each_https_protection_can_be_turned_off(tmp_path: Path) -> None:
    """For a plain-HTTP deployment, e.g. containers on localhost."""
    settings = load_settings(
        tmp_path,
        **PRODUCTION,
        SECURE_SSL_REDIRECT="false",
        SESSION_COOKIE_SECURE="false",
        CSRF_COOKIE_SECURE="false",
        SECURE_HSTS_SECONDS="0",
    )
    assert settings["DEBUG"] is False
    assert settings["SECURE_SSL_REDIRECT"] is False
    assert settings["SESSION_COOKIE_SECURE"] is False
    assert settings["CSRF_COOKIE_SECURE"] is False
    assert settings["SECURE_HSTS_SECONDS"] == 0


def test_environment_wins_over_dotenv(tmp_path: Path) -> None:
    dotenv = "DEBUG=true\nSECRET_KEY=from-dotenv\nLOG_LEVEL=debug\n"
    settings = load_settings(tmp_path, dotenv, DEBUG="false")
    assert settings["DEBUG"] is False
    assert settings["SECRET_KEY"] == "from-dotenv"
    assert settings["LOG_LEVEL"] == "DEBUG"


def test_lists_are_comma_separated(tmp_path: Path) -> None:
    settings = load_settings(
        tmp_path,
        **PRODUCTION,
        ALLOWED_HOSTS="example.com,www.example.com",
        CSRF_TRUSTED_ORIGINS="https://example.com,https://www.example.com",
    )
    assert settings["ALLOWED_HOSTS"] == ["example.com", "www.example.com"]
    assert settings["CSRF_TRUSTED_ORIGINS"] == ["https://example.com", "https://www.example.com"]


def test_without_database_url_the_database_is_sqlite_in_the_project(tmp_path: Path) -> None:
    database = load_settings(tmp_path, **PRODUCTION)["DATABASES"]["default"]
    assert database["ENGINE"] == "django.db.backends.sqlite3"
    assert database["NAME"] == str(tmp_path / "db.sqlite3")


def test_database_url_selects_postgresql(tmp_path: Path) -> None:
    url = "postgres://events:s3cret@db.internal:5433/events_db"
    database = load_settings(tmp_path, **PRODUCTION, DATABASE_URL=url)["DATABASES"]["default"]
    assert database["ENGINE"] == "django.db.backends.postgresql"
    assert (database["NAME"], database["USER"], database["PASSWORD"]) == (
        "events_db",
        "events",
        "s3cret",
    )
    assert (database["HOST"], database["PORT"]) == ("db.internal", 5433)
    # A few connections per process, shared by its requests.
    assert database["OPTIONS"]["pool"] == {"min_size": 1, "max_size": 4, "timeout": 2.0}
    assert database.get("CONN_MAX_AGE", 0) == 0  # what a pool requires


def test_the_database_pool_can_be_sized_or_turned_off(tmp_path: Path) -> None:
    url = "postgres://events:s3cret@db.internal:5433/events_db"

    def database(**environment: str) -> dict[str, Any]:
        directory = tmp_path / str(len(list(tmp_path.iterdir())))
        settings = load_settings(directory, **PRODUCTION, DATABASE_URL=url, **environment)
        return settings["DATABASES"]["default"]

    sized = database(DATABASE_POOL_MAX_SIZE="12", DATABASE_POOL_TIMEOUT="2.5")
    assert sized["OPTIONS"]["pool"] == {"min_size": 1, "max_size": 12, "timeout": 2.5}
    assert "pool" not in database(DATABASE_POOL_MAX_SIZE="0").get("OPTIONS", {})
    # SQLite has no pool.
    sqlite = load_settings(tmp_path / "sqlite", **PRODUCTION)["DATABASES"]["default"]
    assert "pool" not in sqlite.get("OPTIONS", {})


def test_redis_url_is_passed_through_and_empty_means_in_process(tmp_path: Path) -> None:
    assert load_settings(tmp_path / "default", **PRODUCTION)["REDIS_URL"] == ""
    url = "redis://redis:6379/2"
    assert load_settings(tmp_path / "set", **PRODUCTION, REDIS_URL=url)["REDIS_URL"] == url


def test_a_malformed_sentinel_url_does_not_stop_the_settings_from_loading(tmp_path: Path) -> None:
    """manage.py check refuses it with a message (tests/test_sentinel.py); the settings only
    pass it on, to the broker and to the cache."""
    url = "redis+sentinel://:secret@sentinel-1:26379"  # no service name
    settings = load_settings(tmp_path, **PRODUCTION, REDIS_URL=url)
    assert settings["REDIS_URL"] == url
    assert settings["CACHES"]["default"]["LOCATION"] == url


def test_event_settings_defaults(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, **PRODUCTION)
    assert {name: value for name, value in settings.items() if name.startswith("EVENTS_")} == {
        "EVENTS_HEARTBEAT_SECONDS": 15.0,
        "EVENTS_RETRY_MILLISECONDS": 3000,
        "EVENTS_HISTORY_LENGTH": 10000,
        "EVENTS_MAX_PAYLOAD_BYTES": 65536,
        "EVENTS_MAX_TOPICS_PER_STREAM": 16,
        "EVENTS_PARTITIONS": 1,
        "EVENTS_CLIENT_QUEUE_SIZE": 1000,
        "EVENTS_CLIENT_MAX_BACKLOG_BYTES": 1048576,
        "EVENTS_CLIENT_SEND_TIMEOUT_SECONDS": 10.0,
        "EVENTS_REDIS_HEALTH_CHECK_SECONDS": 3.0,
        "EVENTS_SHUTDOWN_RECONNECT_WINDOW_SECONDS": 10.0,
        "EVENTS_SHUTDOWN_GRACE_SECONDS": 3.0,
        "EVENTS_STREAM_MAX_SECONDS": 3600.0,
        "EVENTS_REDIS_PREFIX": "events",
        "EVENTS_CORS_ALLOWED_ORIGINS": [],
        # The demo's topic is public when the demo is installed; nothing else is.
        "EVENTS_PUBLIC_TOPICS": ["demo"] if _has_demo(settings) else [],
        "EVENTS_TOPIC_AUTHORIZER": settings["EVENTS_TOPIC_AUTHORIZER"],
        "EVENTS_MAX_STREAMS_PER_USER": 8,
        "EVENTS_STREAM_RATE": "60/min",
        "EVENTS_PUBLISH_RATE": "600/min",
        "EVENTS_TICKET_SECONDS": 30,
        "EVENTS_IDEMPOTENCY_SECONDS": 86400,
        "EVENTS_PUBLISH_REPLICAS": 0,
        "EVENTS_PUBLISH_REPLICA_TIMEOUT_MILLISECONDS": 1000,
    }
    assert settings["EVENTS_TOPIC_AUTHORIZER"].endswith(
        ".events.access.topics.default_topic_authorizer"
    )


def _has_demo(settings: dict) -> bool:
    return any(app.endswith(".demo") for app in settings["INSTALLED_APPS"])


def test_event_settings_from_the_environment(tmp_path: Path) -> None:
    settings = load_settings(
        tmp_path,
        **PRODUCTION,
        EVENTS_HEARTBEAT_SECONDS="0.5",
        EVENTS_STREAM_MAX_SECONDS="0",
        EVENTS_HISTORY_LENGTH="50",
        EVENTS_REDIS_PREFIX="staging",
        EVENTS_CORS_ALLOWED_ORIGINS="https://app.example.com,https://admin.example.com",
        EVENTS_PUBLIC_TOPICS="news,scores.*",
        EVENTS_MAX_STREAMS_PER_USER="0",
        EVENTS_STREAM_RATE="",
    )
    assert settings["EVENTS_PUBLIC_TOPICS"] == ["news", "scores.*"]
    assert settings["EVENTS_MAX_STREAMS_PER_USER"] == 0
    assert settings["EVENTS_STREAM_RATE"] == ""
    assert settings["EVENTS_HEARTBEAT_SECONDS"] == 0.5
    assert settings["EVENTS_STREAM_MAX_SECONDS"] == 0.0
    assert settings["EVENTS_HISTORY_LENGTH"] == 50
    assert settings["EVENTS_REDIS_PREFIX"] == "staging"
    assert settings["EVENTS_CORS_ALLOWED_ORIGINS"] == [
        "https://app.example.com",
        "https://admin.example.com",
    ]


def test_runserver_is_daphnes_asgi_server() -> None:
    """`manage.py runserver` must serve ASGI, or event streams would hold a thread each."""
    from django.core.management import get_commands

    assert get_commands()["runserver"] == "daphne"


def manage_check(*args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    """``manage.py check`` in a process of its own, with production values and ``settings``."""
    return subprocess.run(
        [sys.executable, "-B", "manage.py", "check", *args],
        cwd=PROJECT_DIR,
        env={
            **os.environ,
            **PRODUCTION,
            "DEBUG": "false",
            "DJANGO_SETTINGS_MODULE": "config.settings",
            **settings,
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_deployment_checks_pass_with_production_values() -> None:
    result = manage_check("--deploy", "--fail-level", "WARNING", ALLOWED_HOSTS="example.com")
    assert result.returncode == 0, result.stderr


def test_a_malformed_rate_or_authorizer_fails_the_startup_checks_with_a_clear_message() -> None:
    result = manage_check(EVENTS_STREAM_RATE="lots", EVENTS_PUBLISH_RATE="5/fortnight")
    assert result.returncode != 0
    assert "(events.E001) EVENTS_STREAM_RATE='lots' is not a rate." in result.stderr
    assert "(events.E001) EVENTS_PUBLISH_RATE='5/fortnight' is not a rate." in result.stderr


def test_a_malformed_network_stops_the_start_with_a_clear_message(tmp_path: Path) -> None:
    """Read per request, a malformed CIDR would answer every request 500 (TRUSTED_PROXIES) or
    every scrape (METRICS_ALLOWED_NETWORKS)."""
    for name in ("TRUSTED_PROXIES", "METRICS_ALLOWED_NETWORKS"):
        with pytest.raises(SettingsError, match=f"{name}: '10.0.0.0/33' does not appear"):
            load_settings(tmp_path / name, DEBUG="true", **{name: "127.0.0.1/32,10.0.0.0/33"})
    allowed = load_settings(tmp_path / "ok", DEBUG="true", TRUSTED_PROXIES="10.1.2.3/8,::1")
    assert allowed["TRUSTED_PROXIES"] == ["10.1.2.3/8", "::1"]


def test_responses_are_never_compressed(client) -> None:
    """Compression would hold event streams back in buffers, so no response is compressed."""
    response = client.get("/accounts/login/", HTTP_ACCEPT_ENCODING="gzip, deflate, br")
    assert response.status_code == 200
    assert len(response.content) > 200  # long enough that compression would apply
    assert "Content-Encoding" not in response.headers


def test_every_event_setting_is_documented_and_listed_in_env_example() -> None:
    """A setting nobody can find is a setting nobody sets: each EVENTS_* variable that
    config/settings.py reads is in .env.example and in the settings table of docs/events.md."""
    source = (PROJECT_DIR / "config" / "settings.py").read_text()
    from_environment = set(re.findall(r'env\.\w+\(\s*"(EVENTS_[A-Z_]+)"', source))
    all_settings = set(re.findall(r"^(EVENTS_[A-Z_]+) =", source, re.MULTILINE))
    env_example = (PROJECT_DIR / ".env.example").read_text()
    documented = set(re.findall(r"^\| `(EVENTS_[A-Z_]+)` \|", _docs("events.md"), re.MULTILINE))
    assert len(from_environment) > 10
    assert {name for name in from_environment if f"\n{name}=" not in env_example} == set()
    assert all_settings - documented == set()


def _docs(name: str) -> str:
    return (PROJECT_DIR / "docs" / name).read_text()
