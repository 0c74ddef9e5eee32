"""`db_worker` with crash recovery: django-tasks-db's worker plus a stale-run sweeper.

django-tasks-db does not know a task whose process was killed; its row stays RUNNING.
Our runs beat a heartbeat while they work, so this worker also looks, every few
seconds, for runs that stopped beating and enqueues workers that take them over.
"""

import logging
import threading

from django.conf import settings
from django.db import close_old_connections, connection
from django_tasks_db.management.commands.db_worker import Command as DBWorkerCommand

from conversions.services import runs_recover_stale

logger = logging.getLogger(__name__)


class Command(DBWorkerCommand):
    help = DBWorkerCommand.help + " Also takes over re-trigger runs whose worker died."

    def handle(self, *args, **options):
        stop = threading.Event()
        sweeper = threading.Thread(target=self._sweep, args=(stop,), daemon=True)
        sweeper.start()
        try:
            return super().handle(*args, **options)
        finally:
            stop.set()

    @staticmethod
    def _sweep(stop: threading.Event) -> None:
        interval = max(1.0, settings.RETRIGGER_HEARTBEAT_STALE / 3)
        while not stop.is_set():
            try:
                close_old_connections()
                recovered = runs_recover_stale()
                if recovered:
                    logger.warning("took over stale runs %s", recovered)
            except Exception:
                logger.exception("stale-run sweep failed")
            finally:
                connection.close()
            stop.wait(interval)
