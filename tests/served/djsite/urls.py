from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("", views.hello_sync),
    path("delayed-hello", views.delayed_hello_sync),
    path("hello", views.hello),
    path("work", views.work),
    path("quick", views.quick),
    path("work-sync", views.work_sync),
    path("sleepy-sync", views.sleepy_sync),
    path("upload", views.upload),
    path("stream", views.stream),
    path("db", views.db),
    path("grace", views.grace),
    path("held", views.held),
    path("download", views.download),
    path("statement-sync", views.statement_sync),
    path("statement-async", views.statement_async),
    path("statement-orm", views.statement_orm),
    path("statement-after", views.statement_after),
]
