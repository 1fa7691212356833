from django.urls import path

from .views import demo_page

app_name = "demo"

urlpatterns = [
    path("", demo_page, name="index"),
]
