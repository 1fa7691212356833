"""The project's settings, with the URLs of the article's design (``benchmarks.article``)."""

from config.settings import *  # noqa: F403

ROOT_URLCONF = "benchmarks.article"
