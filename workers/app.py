"""The Celery app, configured from `digitreader.settings.Settings` (DIGITREADER_BROKER_URL, ...).

    celery -A workers.app worker -Q pages ...     # what `digitreader worker --pool page` runs

Reliability choices (the why of every setting below):

- task_acks_late: a message is acknowledged only after its task finished, so a worker that dies
  mid-document loses nothing: the message goes to another worker. Safe because every task is
  idempotent (a finished document is skipped; storing replaces a document's rows under a lock).
- task_reject_on_worker_lost: when a pool process dies (SIGKILL, OOM, segfault in a native
  library) its message is requeued instead of being marked failed. A poison document would then
  loop; the redelivery cap (`digitreader.distributed.Deliveries`, counted in Redis) ends it.
- acks_on_failure_or_timeout=False on the page task: past the HARD time limit the process is
  killed and the message requeued and counted like a crash (the soft limit, raised inside the
  task, records a `timeout` failure first in the normal case).
- worker_prefetch_multiplier=1 for the page pool: documents take seconds, so a worker reserves
  only the one it works on and an idle worker is never starved by a busy one's reservations.
  The inference pool prefetches many (it needs many messages to fill one batch).
- visibility_timeout (Redis) longer than any task: derived from DIGITREADER_DOCUMENT_TIME_LIMIT
  (`digitreader.distributed.limits`): 2 x hard limit + the longest retry countdown.
- task_publish_retry: publishing retries through short broker outages (a Redis restart).
- broker_connection_retry / max_retries=None: a worker reconnects for ever instead of exiting
  when Redis restarts; worker_cancel_long_running_tasks_on_connection_loss: tasks running when
  the connection dropped are cancelled and their messages redelivered, because their
  acknowledgements could no longer reach the broker anyway.
- No result backend: nothing waits on task results; progress is read from the database.
- JSON only (no pickle): a message from the broker cannot run code in a worker.
- body_encoding "utf-8" (Redis transport): the JSON body is stored as it is instead of being
  base64-encoded once more by kombu; the infer messages (crops already base64 inside the JSON) are
  25 % smaller and publishing one takes ~0.5 ms less. Consumers decode by the encoding recorded
  in each message, so messages of either kind are read alike.
"""

from __future__ import annotations

import logging
import threading

from celery import Celery

from digitreader.distributed import INFER_QUEUE, INFER_TASK, PAGES_QUEUE, PART_TASK, SEGMENT_TASK, limits
from digitreader.settings import Settings, get_settings

log = logging.getLogger(__name__)

DEFAULT_BROKER = "redis://127.0.0.1:6379/0"


def make_app(settings: Settings) -> Celery:
    """A Celery app for `settings` (the broker, the time limits, the reliability options)."""
    lim = limits(settings)
    app = Celery("digitreader", broker=settings.broker_url or DEFAULT_BROKER, include=["workers.tasks"])
    app.conf.update(
        result_backend=settings.result_backend,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_routes={
            SEGMENT_TASK: {"queue": PAGES_QUEUE},
            PART_TASK: {"queue": PAGES_QUEUE},
            INFER_TASK: {"queue": INFER_QUEUE},
        },
        task_default_queue=PAGES_QUEUE,
        task_soft_time_limit=lim.soft,
        task_time_limit=lim.hard,
        broker_transport_options={
            "body_encoding": "utf-8",  # JSON text as it is (kombu's Redis default: base64 on top)
            "visibility_timeout": lim.visibility,
            # Look for messages of dead workers often enough to honour the timeout.
            "unacked_restore_interval": max(1, min(30, lim.visibility // 4)),
            "unacked_restore_throttle": 1,
        },
        task_publish_retry=True,
        task_publish_retry_policy={"max_retries": 30, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 3},
        broker_connection_retry=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_hijack_root_logger=True,
        worker_log_format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s",
        worker_task_log_format="%(asctime)s %(levelname)s %(processName)s %(task_name)s[%(task_id)s]: %(message)s",
        worker_send_task_events=False,
        broker_channel_error_retry=True,
    )
    return app


_lock = threading.Lock()
_apps: dict[tuple[str | None, float], Celery] = {}


def get_app(settings: Settings) -> Celery:
    """The app for these settings (cached): the process-wide `app` when they match."""
    key = (settings.broker_url, settings.document_time_limit)
    with _lock:
        if key not in _apps:
            _apps[key] = make_app(settings)
        return _apps[key]


#: The app `celery -A workers.app` and the worker command use (process settings).
app = get_app(get_settings())
