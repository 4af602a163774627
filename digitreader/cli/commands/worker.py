"""`digitreader worker --pool page|infer`: start a Celery worker of one pool (thin adapter)."""

from __future__ import annotations

import logging
import os
import socket

import typer

from digitreader.errors import UsageError
from digitreader.settings import Settings, get_settings

log = logging.getLogger(__name__)

POOLS = ("page", "infer")


def infer_prefetch(settings: Settings) -> int:
    """Messages the inference worker may hold unacknowledged: enough to fill a batch of
    DIGITREADER_BATCH_SIZE crops with small pages (~16 crops each), at least 64."""
    return max(64, 4 * settings.batch_size // 16)


def worker_argv(pool: str, settings: Settings, *, concurrency: int | None = None, loglevel: str = "INFO",
                name: str | None = None) -> list[str]:  # fmt: skip
    """The `celery worker` arguments for a pool.

    page:  queue `pages`, prefork pool, one process per core (default), prefetch 1, fair
           scheduling: documents take seconds, so no process reserves work it cannot start.
    infer: queue `infer`, one thread running the model (it is multi-threaded itself and holds
           the GPU), a large prefetch so that one flush can gather DIGITREADER_BATCH_SIZE crops.
    """
    from digitreader.distributed import INFER_QUEUE, PAGES_QUEUE

    if pool not in POOLS:
        raise UsageError(f"--pool must be page or infer, not {pool!r}")
    node = name or f"{pool}-{os.getpid()}@{socket.gethostname()}"
    common = ["worker", "-n", node, "-l", loglevel, "--without-mingle", "--without-gossip"]
    if pool == "page":
        n = concurrency or settings.workers or os.cpu_count() or 1
        return common + ["-Q", PAGES_QUEUE, "--pool", "prefork", "-c", str(n), "--prefetch-multiplier", "1", "-O",
                         "fair"]  # fmt: skip
    n = concurrency or 1
    return common + ["-Q", INFER_QUEUE, "--pool", "threads", "-c", str(n), "--prefetch-multiplier",
                     str(infer_prefetch(settings))]  # fmt: skip


def worker(
    pool: str = typer.Option(
        ...,
        "--pool",
        "-p",
        help="page (load, prepare, segment, normalize: CPU) or infer (batched recognition: GPU when there is one).",
    ),
    concurrency: int | None = typer.Option(
        None,
        "--concurrency",
        "-c",
        min=1,
        help="page: processes (default DIGITREADER_WORKERS, else one per core); infer: threads (default 1).",
    ),
    loglevel: str = typer.Option("INFO", "--loglevel", "-l", help="DEBUG, INFO, WARNING or ERROR."),
    name: str | None = typer.Option(None, "--name", "-n", help="Node name (default POOL-PID@HOST)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the celery command line and exit."),
) -> None:
    """Run a worker of the distributed mode until stopped (SIGTERM/Ctrl-C: finish the current task).

    Needs DIGITREADER_BROKER_URL (Redis) and DIGITREADER_DATABASE_URL (PostgreSQL) shared by every
    worker and by `digitreader submit`; the scan files must be visible to the page workers at the
    paths submitted (a shared volume). Start as many page workers as there are machines with cores
    to spare, and one inference worker per GPU. The inference worker loads the model once at start
    (CUDA when onnxruntime-gpu sees a GPU) and fails at once (exit 5) when it is missing.

    Example:  DIGITREADER_BROKER_URL=redis://redis:6379/0 digitreader worker --pool page -c 8
    """
    settings = get_settings()
    if not settings.broker_url:
        raise UsageError("no broker configured: the worker needs DIGITREADER_BROKER_URL",
                         hint="e.g. export DIGITREADER_BROKER_URL=redis://127.0.0.1:6379/0")  # fmt: skip
    argv = worker_argv(pool, settings, concurrency=concurrency, loglevel=loglevel.upper(), name=name)
    if dry_run:
        typer.echo("celery -A workers.app " + " ".join(argv))
        return
    from workers.app import app as celery_app

    if pool == "infer":
        from workers.tasks import get_predictor

        get_predictor()  # load once, now: a missing or corrupt model stops the worker with exit 5
        import threading

        from workers.tasks import warm_up

        threading.Thread(target=warm_up, name="warm-up", daemon=True).start()  # database and Redis, best effort

        from digitreader.distributed import sweep_orphans_forever

        # Safety net for documents whose message the broker lost (see requeue_orphans).
        threading.Thread(target=sweep_orphans_forever, args=(settings,), name="orphan-sweep", daemon=True).start()
    log.info("starting the %s pool: celery %s", pool, " ".join(argv))
    celery_app.worker_main(argv)


def register(app: typer.Typer) -> None:
    app.command("worker")(worker)
