"""The database cache table (throttle counters shared by every server process).

Created by a migration so that `migrate` alone sets up a fresh clone, on SQLite and on
PostgreSQL; `createcachetable` is idempotent.
"""

from django.core.management import call_command
from django.db import migrations


def create_cache_table(apps, schema_editor):
    call_command("createcachetable", database=schema_editor.connection.alias, verbosity=0)


class Migration(migrations.Migration):
    dependencies = [("conversions", "0001_initial")]

    operations = [migrations.RunPython(create_cache_table, migrations.RunPython.noop)]
