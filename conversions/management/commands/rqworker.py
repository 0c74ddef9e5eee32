"""`rqworker` with the stale-run sweeper, like our `db_worker`.

`conversions` comes first in INSTALLED_APPS, so this wraps django-rq's command: RQ
workers then also take over runs whose every worker died.
"""

from django_rq.management.commands.rqworker import Command as RQWorkerCommand

from conversions.tasks import stale_run_sweeper


class Command(RQWorkerCommand):
    def handle(self, *args, **options):
        with stale_run_sweeper():
            return super().handle(*args, **options)
