"""Refuse answers that would generate a broken project, before any file is written.

Each problem is printed to stderr with the answer and the rule it breaks; then the hook exits 1 and
cookiecutter removes the output directory.
"""

import json
import keyword
import re
import sys
import zoneinfo

SUPPORTED_PYTHON_VERSIONS = ("3.11", "3.12", "3.13")

# Import names of the project's dependencies (runtime and development), and the project's own
# top-level directories: a package named like one of them would shadow it. Python's own modules are
# checked separately (sys.stdlib_module_names).
RESERVED_NAMES = frozenset(
    {
        "anyio",
        "asgiref",
        "attr",
        "attrs",
        "autobahn",
        "automat",
        "benchmarks",
        "certifi",
        "cffi",
        "config",
        "constantly",
        "cryptography",
        "daphne",
        "django",
        "docs",
        "environ",
        "greenlet",
        "gunicorn",
        "h11",
        "httpcore",
        "httpx",
        "hyperlink",
        "idna",
        "incremental",
        "iniconfig",
        "manage",
        "nginx",
        "openssl",
        "packaging",
        "pip",
        "playwright",
        "pluggy",
        "psycopg",
        "psycopg2",
        "psycopg_binary",
        "pyasn1",
        "pyasn1_modules",
        "pycparser",
        "pyee",
        "pygments",
        "pytest",
        "pytest_django",
        "pytest_timeout",
        "redis",
        "rest_framework",
        "ruff",
        "service_identity",
        "setuptools",
        "sniffio",
        "sqlparse",
        "staticfiles",
        "test",
        "tests",
        "twisted",
        "txaio",
        "typing_extensions",
        "zope",
    }
)

IDENTIFIER = re.compile(r"[a-z][a-z0-9_]*")
# Dot-separated labels of letters, digits and inner hyphens, ending in an alphabetic top level.
DOMAIN = r"(?=.{1,253}$)((?!-)[a-z0-9-]{1,63}(?<!-)\.)+[a-z]{2,63}"
DOMAIN_NAME = re.compile(DOMAIN, re.IGNORECASE)
EMAIL = re.compile(r"[^@\s]+@" + DOMAIN, re.IGNORECASE)


def problems(answers: dict[str, object]) -> list[str]:
    found = []
    slug = str(answers["project_slug"])
    if not IDENTIFIER.fullmatch(slug) or keyword.iskeyword(slug):
        found.append(
            f"project_slug {slug!r}: must be a lowercase Python identifier (a letter, then "
            "lowercase letters, digits or underscores) and not a Python keyword"
        )
    elif slug in RESERVED_NAMES or slug in sys.stdlib_module_names:
        found.append(
            f"project_slug {slug!r}: must not shadow a module the project imports or one of its "
            "directories (Python's own modules, Django, Daphne, Redis, config, tests, ...)"
        )
    email = str(answers["email"])
    if not EMAIL.fullmatch(email):
        found.append(f"email {email!r}: must be an address such as jane@example.com")
    domain = str(answers["domain_name"])
    if not DOMAIN_NAME.fullmatch(domain):
        found.append(
            f"domain_name {domain!r}: must be a host name such as example.com "
            "(no scheme, port or path)"
        )
    timezone = str(answers["timezone"])
    if timezone not in zoneinfo.available_timezones():
        found.append(
            f"timezone {timezone!r}: must be an IANA time zone name such as UTC or Europe/Paris"
        )
    python_version = str(answers["python_version"])
    if python_version not in SUPPORTED_PYTHON_VERSIONS:
        found.append(
            f"python_version {python_version!r}: must be one of "
            f"{', '.join(SUPPORTED_PYTHON_VERSIONS)} (the versions Django 5.2 and every pinned "
            "dependency support)"
        )
    return found


def main() -> int:
    answers = json.loads(r"""{{ cookiecutter | tojson }}""")
    found = problems(answers)
    for problem in found:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
