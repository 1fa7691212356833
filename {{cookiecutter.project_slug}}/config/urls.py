"""URL configuration: probes, admin, sign-in, the event API{% if cookiecutter.include_demo %} and the demo page{% endif %}."""

from django.contrib import admin
{%- if not cookiecutter.include_demo %}
from django.contrib.auth.views import LoginView
{%- endif %}
from django.urls import include, path
{%- if not cookiecutter.include_demo %}
from django.views.generic import RedirectView
{%- endif %}
from drf_spectacular.views import SpectacularAPIView

from {{ cookiecutter.project_slug }}.events.api.schema import ApiDocsView
from {{ cookiecutter.project_slug }}.observability.metrics import metrics

urlpatterns = [
    path("", include("{{ cookiecutter.project_slug }}.health.urls")),
    path("metrics", metrics, name="metrics"),
    path("admin/", admin.site.urls),
{%- if not cookiecutter.include_demo %}
    # The admin's sign-in page, until the project has its own registration/login.html.
    path("accounts/login/", LoginView.as_view(template_name="admin/login.html"), name="login"),
{%- endif %}
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/events/", include("{{ cookiecutter.project_slug }}.events.urls")),
    # The API's contract (OpenAPI 3), and a page to read it.
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", ApiDocsView.as_view(url_name="schema"), name="api-docs"),
{%- if cookiecutter.include_demo %}
    path("", include("{{ cookiecutter.project_slug }}.demo.urls")),
{%- else %}
    # Without the demo there is no home page: the admin is where there is something to see.
    path("", RedirectView.as_view(pattern_name="admin:index")),
{%- endif %}
]
