"""`db_worker` with crash recovery: django-tasks-db's worker plus a stale-run sweeper.

django-tasks-db does not notice a task whose process was killed; its row stays RUNNING.
Our runs beat a heartbeat while they work, so this worker also looks, every few
seconds, for runs that stopped beating and enqueues workers that take them over
(`conversions.tasks.stale_run_sweeper`).
"""

from django_tasks_db.management.commands.db_worker import Command as DBWorkerCommand

from conversions.tasks import stale_run_sweeper


class Command(DBWorkerCommand):
    help = DBWorkerCommand.help + " Also takes over re-trigger runs whose worker died."

    def handle(self, *args, **options):
        with stale_run_sweeper():
            return super().handle(*args, **options)
