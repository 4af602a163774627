"""Celery tasks: thin adapters. Parse ids, call the library (`digitreader.distributed`), serialize.

- `digitreader.segment(document_id)` on queue `pages` (prefork pool, one document per process):
  `run_page_job` -> publishes `digitreader.infer(document_id, batch_id, cut=<bytes>)`; a long PDF or
  TIFF (more than DIGITREADER_PART_PAGES pages) is queued instead as parts,
  `digitreader.segment_part(document_id, index, count, first, last)` on queue `pages`:
  `run_part_job`, the last part in publishes the document's `infer` task.
- `digitreader.infer` on queue `infer` (celery-batches): the worker buffers requests and flushes
  them as ONE call when their crops reach DIGITREADER_BATCH_SIZE or `INFER_FLUSH_SECONDS` after the
  first one arrived, whichever comes first -> `run_infer_batch`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery import Task, signals
from celery.exceptions import Reject, SoftTimeLimitExceeded
from celery_batches import Batches

from digitreader import distributed as dist
from digitreader.db.session import get_engine
from digitreader.settings import get_settings
from workers.app import app
from workers.codec import CodecError, decode_cut, encode_cut, from_text, to_text

if TYPE_CHECKING:
    from kombu.asynchronous.timer import Entry

log = logging.getLogger(__name__)

#: The longest a request waits in the inference worker's buffer before its batch runs.
INFER_FLUSH_SECONDS = 0.5

_settings = get_settings()
_limits = dist.limits(_settings)
_lock = threading.Lock()
_state: dict[str, Any] = {}


def get_predictor() -> Any:
    """The inference worker's model, loaded once per process (CUDA when onnxruntime has it)."""
    with _lock:
        if "predictor" not in _state:
            from digitreader.pipeline.process import load_predictor

            p = load_predictor(_settings)
            log.info("inference model %s on %s, batches of %d crops", p.info.version, p.info.provider,
                     _settings.batch_size)  # fmt: skip
            _state["predictor"] = p
        return _state["predictor"]


def get_deliveries() -> dist.Deliveries:
    with _lock:
        if "deliveries" not in _state:
            _state["deliveries"] = dist.Deliveries.from_settings(_settings)
        return _state["deliveries"]


def warm_up() -> None:
    """Connect to the database (engine, schema check, one pooled connection) and to Redis now,
    compile the page task's query (a claim of document id 0, which does not exist) and import the
    pipeline's stage modules, so that a fresh worker process's first document does not pay for it
    (~0.45 s). Best effort: on any error the first task connects (and retries) as it would have."""
    try:
        import digitreader.pipeline.load
        import digitreader.pipeline.segment  # noqa: F401
        from digitreader.pipeline import native

        native.warn_missing()  # a worker built without a stage's C half: said once a process

        dist.claim_job(get_engine(_settings), 0)
        get_deliveries().client.ping()
    except Exception as exc:
        log.warning("warm-up skipped, the first document will connect: %s", exc)


@signals.worker_process_init.connect
def _one_thread_per_process(**_: Any) -> None:
    # Each page-pool process is one core's worth of work: no OpenCV thread pool on top.
    import cv2

    cv2.setNumThreads(1)
    _state.pop("deliveries", None)  # a Redis connection must not be shared across fork
    # In a thread: this handler must return within Celery's process start timeout (4 s), and an
    # unreachable database can take longer than that to say so.
    threading.Thread(target=warm_up, name="warm-up", daemon=True).start()


class DocumentTask(Task):
    """Retries transient errors by republishing; if even that fails (the broker is down), the
    message is requeued instead of dropped (Celery's default there is Reject(requeue=False))."""

    def retry(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().retry(*args, **kwargs)
        except Reject as exc:
            if exc.requeue:
                raise
            raise Reject(exc.reason, requeue=True) from exc


#: The page pool's tasks (a document, or a part of a long one): the same delivery guarantees.
PAGE_TASK_OPTIONS: dict[str, Any] = {
    "base": DocumentTask,
    "bind": True,
    "acks_late": True,
    "reject_on_worker_lost": True,
    "acks_on_failure_or_timeout": False,  # hard time limit -> requeue, counted like a crash
    "soft_time_limit": _limits.soft,  # per document, or per part of a long one (as embedded)
    "time_limit": _limits.hard,
    "autoretry_for": (dist.TransientError,),  # database / broker connection errors only
    "retry_backoff": True,
    "retry_backoff_max": _limits.retry_backoff_max,
    "retry_jitter": True,
    "max_retries": None,  # transient means transient: documents wait for the database, never fail for it
}


def _page_task(doc_id: int, what: str, run: Callable[[], dist.PageOutcome]) -> str:
    """Run a page-pool task's library call: transient errors are raised for Celery to retry, anything
    else unexpected fails the document (never the batch). Returns the outcome's status."""
    try:
        return run().status
    except SoftTimeLimitExceeded as exc:
        # Segmentation turns its own overrun into a `timeout` failure; out here the clock ran out
        # while waiting for the database or the broker: try again later, off the clock.
        raise dist.TransientError("time limit reached while waiting for the database or broker") from exc
    except Exception as exc:
        if dist.is_transient(exc):
            raise dist.TransientError(f"{type(exc).__name__}: {exc}") from exc
        log.exception("%s: unexpected error", what)
        dist.fail_unexpected(_settings, doc_id, exc)
        return "failed"


@app.task(name=dist.SEGMENT_TASK, **PAGE_TASK_OPTIONS)
def segment(self: Task, document_id: int) -> str:
    """Segment one document (queue `pages`) and hand its crops to the inference pool; a long one is
    queued in parts instead (`segment_part`)."""
    doc_id = int(document_id)

    def publish_part(job: dist.DocumentJob, index: int, count: int, pages: tuple[int, int]) -> None:
        segment_part.apply_async(args=[job.document_id, index, count, *pages], queue=dist.PAGES_QUEUE)

    return _page_task(doc_id, f"document {doc_id}", lambda: dist.run_page_job(
        doc_id, _settings, publish=_publish_infer, deliveries=get_deliveries(), encode=encode_cut,
        publish_part=publish_part))  # fmt: skip


@app.task(name=dist.PART_TASK, **PAGE_TASK_OPTIONS)
def segment_part(self: Task, document_id: int, index: int, count: int, first: int, last: int) -> str:
    """Segment pages first-last of a long document (queue `pages`); the last part in hands the
    whole document to the inference pool."""
    doc_id = int(document_id)
    deliveries = get_deliveries()
    parts = dist.PartCuts.beside(deliveries)
    return _page_task(doc_id, f"document {doc_id} part {index}", lambda: dist.run_part_job(
        doc_id, int(index), int(count), (int(first), int(last)), _settings, publish=_publish_infer,
        deliveries=deliveries, parts=parts, encode=encode_cut, decode=decode_cut))  # fmt: skip


def _publish_infer(job: dist.DocumentJob, blob: bytes, crops: int) -> None:
    infer.apply_async(
        args=[job.document_id, job.batch_id], kwargs={"cut": to_text(blob)},
        headers={dist.CROPS_HEADER: crops}, queue=dist.INFER_QUEUE,
    )  # fmt: skip


class CropBatches(Batches):
    """celery-batches, flushed by the number of crops buffered (message header) or by time."""

    flush_every = 1_000_000  # (count of requests: unused; crops decide)
    flush_interval = INFER_FLUSH_SECONDS
    flush_crops = _settings.batch_size
    _crops = 0
    _tref: Entry | None  # celery-batches' repeating flush timer (set in Batches.__init__); for mypy only

    def Strategy(self, task: Any, app: Any, consumer: Any) -> Any:  # noqa: N802 (Celery's name)
        # Called again when the consumer restarts after a lost broker connection. Celery clears the
        # event loop's timers then, the repeating flush among them, while celery-batches still holds
        # its reference and so never starts another: requests would only be flushed by size and the
        # last ones of a batch would wait until copies restored by the visibility timeout add up.
        # Forget the old timer: the next request starts a new one.
        if self._tref is not None:
            self._tref.cancel()
            self._tref = None
        handler = super().Strategy(task, app, consumer)

        def counting(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kw: Any) -> None:
            handler(message, body, ack, reject, callbacks, **kw)
            self._crops += int((message.headers or {}).get(dist.CROPS_HEADER) or 0)
            if self._crops >= self.flush_crops:
                self._do_flush()

        return counting

    def _do_flush(self) -> None:
        self._crops = 0
        super()._do_flush()


@app.task(name=dist.INFER_TASK, base=CropBatches, acks_late=True)
def infer(requests: list[Any]) -> dict[str, int]:
    """Recognize the crops of many documents at once (queue `infer`), store each document."""
    items: list[dist.InferItem] = []
    for r in requests:
        doc_id, batch_id = int(r.args[0]), int(r.args[1])
        try:
            cut = decode_cut(from_text(r.kwargs["cut"]))
        except (CodecError, KeyError) as exc:
            log.error("document %s: corrupt infer message: %s", doc_id, exc)
            dist.fail_unexpected(_settings, doc_id, exc)
            continue
        items.append(dist.InferItem(doc_id, batch_id, cut))
    if not items:
        return {"documents": 0}
    out = dist.run_infer_batch(items, _settings, predictor=get_predictor(), deliveries=get_deliveries())
    for it in out.retry:  # the database stayed down: back to the queue (from the start of the line)
        infer.apply_async(
            args=[it.document_id, it.batch_id], kwargs={"cut": to_text(encode_cut(it.cut))},
            headers={dist.CROPS_HEADER: it.cut.crops}, queue=dist.INFER_QUEUE, countdown=5,
        )  # fmt: skip
    log.info("inference batch: %d document(s), %d crops in %d group(s), %.3f s; %d stored, %d duplicate, "
             "%d failed, %d handed back", len(items), out.crops, out.groups, out.seconds, len(out.stored),
             len(out.skipped), len(out.failed), len(out.retry))  # fmt: skip
    return {"documents": len(items), "crops": out.crops}
