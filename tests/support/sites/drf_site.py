"""A Django REST Framework API with DRF's three stock paginators, nothing of ours.

Run as ``python drf_site.py PORT DB_PATH USERS``: a SQLite database of USERS
``auth.User`` rows, served by ``runserver`` at:

- ``/page/``        PageNumberPagination (``?page=N``; page_size 10, or ``?page_size=``)
- ``/limitoffset/`` LimitOffsetPagination with ``max_limit = 50``
- ``/cursor/``      CursorPagination ordered by id (next is an opaque URL)

Each answers ``{"count", "next", "previous", "results": [{"id", "username"}]}``
(the cursor one without ``count``).
"""

from __future__ import annotations

import sys

import django
from django.conf import settings

PORT, DB, USERS = sys.argv[1], sys.argv[2], int(sys.argv[3])

settings.configure(
    DEBUG=False, ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__, SECRET_KEY="test-only",
    INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "rest_framework"],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": DB}},
    MIDDLEWARE=[], USE_TZ=True,
    REST_FRAMEWORK={"UNAUTHENTICATED_USER": None, "DEFAULT_AUTHENTICATION_CLASSES": [],
                    "DEFAULT_PERMISSION_CLASSES": []},
)
django.setup()

from django.contrib.auth.models import User  # noqa: E402
from django.core.management import call_command, execute_from_command_line  # noqa: E402
from django.urls import path  # noqa: E402
from rest_framework import generics, serializers  # noqa: E402
from rest_framework.pagination import (CursorPagination, LimitOffsetPagination,  # noqa: E402
                                       PageNumberPagination)


class UserSerializer(serializers.ModelSerializer):
    class Meta:
        model = User
        fields = ["id", "username"]


class Pages(PageNumberPagination):
    page_size = 10
    page_size_query_param = "page_size"


class LimitOffset(LimitOffsetPagination):
    max_limit = 50


class Cursor(CursorPagination):
    ordering = "id"
    page_size = 10


def listing(paginator: type) -> type:
    return type(f"{paginator.__name__}View", (generics.ListAPIView,), {
        "queryset": User.objects.order_by("id"), "serializer_class": UserSerializer,
        "pagination_class": paginator})


urlpatterns = [path("page/", listing(Pages).as_view()),
               path("limitoffset/", listing(LimitOffset).as_view()),
               path("cursor/", listing(Cursor).as_view())]

if __name__ == "__main__":
    call_command("migrate", run_syncdb=True, verbosity=0)
    if not User.objects.exists():
        User.objects.bulk_create(User(username=f"user{i:05d}") for i in range(1, USERS + 1))
    execute_from_command_line([sys.argv[0], "runserver", f"127.0.0.1:{PORT}", "--noreload"])
