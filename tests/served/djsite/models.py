from __future__ import annotations

from typing import ClassVar

from django.db import models


class Mark(models.Model):
    """A row of the ``marks`` table that the statement tests create (not migrated)."""

    rid: models.CharField[str, str] = models.CharField(max_length=100, primary_key=True)

    objects: ClassVar[models.Manager[Mark]] = models.Manager()

    class Meta:
        managed = False
        db_table = "marks"
        app_label = "djsite"
