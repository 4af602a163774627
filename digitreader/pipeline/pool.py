"""The segmentation pool: the process pool that cuts documents on every core (`process._run` feeds it),
and what it takes to keep it from hanging.

- `make_executor(workers)`: a pool of `workers` processes started by a fork server that has imported
  the segmentation modules (`pool_preload`, `start_pool_server`), or `InlineExecutor` for one.
  Its processes are set up by `document.init_worker` (one OpenCV thread, Ctrl-C and SIGTERM left
  to the batch's process, a watch on that process).
- A pool one of whose processes dies (a crash, the out-of-memory killer) is broken: `pool_submit`
  reports a submission that fails as it breaks as broken, `end_broken_pool` ends every process it
  had, `ReaderWatch` notices a pool whose reader waits forever on a message a dying process left
  half-sent, and `stop_pool` shuts any pool down without waiting forever.

These read `concurrent.futures.ProcessPoolExecutor`'s internals (`_processes`, `_result_queue`,
`_executor_manager_thread`, `_broken`): CPython 3.11's, which the project pins.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool  # by name: `cf.process` exists once imported
from typing import Any

from digitreader.pipeline.document import WORKER_MODULES, DocumentCut, init_worker

log = logging.getLogger(__name__)


class InlineExecutor(cf.Executor):
    """Runs the work at submit time (one document, or workers=1): no process start-up cost."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        fut: cf.Future[Any] = cf.Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            fut.set_exception(exc)
        return fut


def pool_preload() -> list[str]:
    """What the pool's fork server imports before it forks the pool's processes: the segmentation
    modules (`document.WORKER_MODULES`) and the digitreader modules this process has loaded (with
    them, what its main module needs: a pool process imports the main module again before its first
    task). Imported once there, not once in each pool process: about 0.5 s of CPU a process.
    `__main__` first, as multiprocessing's own default (Python 3.11's fork server never acts on it)."""
    mine = {m for m in list(sys.modules) if m.startswith("digitreader.") and not m.endswith("__main__")}
    return ["__main__", *WORKER_MODULES, *sorted(mine - set(WORKER_MODULES))]


def pool_context() -> Any:
    """The pool's start method: a fork server that has imported what segmenting needs, else spawn."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(pool_preload())
    return context


def start_pool_server() -> None:
    """Start the pool's fork server now, without waiting for it: its imports (about 0.7 s of one core)
    then overlap this process's work before the pool is needed (hashing the batch's files). Only
    the fork server's first start imports anything; later calls do nothing."""
    context = pool_context()
    if context.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def make_executor(workers: int) -> cf.Executor:
    return process_pool(workers) if workers > 1 else InlineExecutor()


def process_pool(workers: int) -> cf.ProcessPoolExecutor:
    return cf.ProcessPoolExecutor(
        max_workers=workers,
        mp_context=pool_context(),
        initializer=init_worker,
        initargs=(os.getpid(),),  # the pool's processes end if this one is killed
    )


#: How long a broken pool's own thread is given to end once its processes are killed (seconds).
BROKEN_POOL_WAIT = 10.0


def pool_submit(pool: cf.Executor, fn: Callable[..., DocumentCut], *args: Any) -> cf.Future[DocumentCut]:
    """`pool.submit`, with a pool that breaks during the call reported as broken. A submission that
    starts a pool process checks that the pool is whole, then starts the process; when another of its
    processes dies in between, the pool's thread closes the queue the new process is to be given, and
    the submission failed with `OSError: handle is closed`: the whole batch stopped with an internal
    error where one document should have failed (`test_a_document_that_kills_its_pool_process_fails_alone`,
    one run in three)."""
    try:
        return pool.submit(fn, *args)
    except BrokenProcessPool:
        raise
    except Exception as exc:
        if getattr(pool, "_broken", False):
            raise BrokenProcessPool(f"the pool broke while this document was submitted: {exc!r}") from exc
        raise


def end_broken_pool(
    pool: cf.ProcessPoolExecutor, processes: dict[int, Any] | None = None, thread: threading.Thread | None = None
) -> None:
    """End a pool one of whose processes died, and every process it had. Python's pool ends those it
    knows of when it finds itself broken; a process that a submission was starting at that moment
    (see `pool_submit`) joined the pool after that, was never told to stop, and the pool's thread
    waited for it forever: at the end of the batch, or at the interpreter's exit (a CI run that timed
    out after every test had passed). Called once this process has seen the pool broken: nothing is
    submitted to it any more, so the processes it lists are all it will ever have. `processes` and
    `thread`: the pool's, taken before a shutdown made it forget them."""
    procs = list((getattr(pool, "_processes", None) or processes or {}).values())
    thread = getattr(pool, "_executor_manager_thread", None) or thread
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:  # SIGKILL: pool processes ignore SIGTERM (`document.init_worker`)
        if proc.is_alive():
            proc.kill()
    if thread is not None:
        thread.join(BROKEN_POOL_WAIT)
        if thread.is_alive():  # pragma: no cover - only if Python's pool changes its ways
            log.warning("a broken segmentation pool did not end within %.0f s; going on", BROKEN_POOL_WAIT)


#: A pool process dead this long without the pool noticing: the pool's reader is stuck (seconds).
STUCK_AFTER = 2.0


class ReaderWatch:
    """Unsticks a pool's reader. A pool process killed (SIGKILL, the out-of-memory killer) while it
    sent its result back leaves the pool's thread reading the rest of the message forever: this
    process holds the pipe's writing end too, so the read never ends, the pool never finds itself
    broken, and the batch waited forever (and its process at exit). When a process of the pool has
    been dead `STUCK_AFTER` seconds and the pool has not noticed, the watch writes filler into the
    pipe until the reader has its message: garbage, so the pool finds itself broken, and the documents
    in it are read again alone (`_run`). It reads the pool's internals: CPython 3.11's, which the project pins."""

    def __init__(self, pool: cf.Executor) -> None:
        self.pool = pool  # an `InlineExecutor` has no reader: the watch does nothing
        self.thread: threading.Thread | None = None
        self.queue: Any = None
        self.processes: dict[int, Any] = {}
        self.dead_since: float | None = None

    def _refresh(self) -> None:  # the pool makes them on its first submission, and forgets them at shutdown
        self.thread = getattr(self.pool, "_executor_manager_thread", None) or self.thread
        self.queue = getattr(self.pool, "_result_queue", None) or self.queue
        self.processes = getattr(self.pool, "_processes", None) or self.processes

    def check(self) -> None:
        """Unstick the reader when a process of the pool has been dead `STUCK_AFTER` seconds and the
        pool has not noticed. (A pool's processes end only when told, once nothing is left to read,
        and the pool's thread then joins them in a moment.)"""
        self._refresh()
        if (
            self.thread is None
            or not self.thread.is_alive()
            or getattr(self.pool, "_broken", False)
            or not any(p.exitcode is not None for p in list(self.processes.values()))
        ):
            self.dead_since = None
            return
        now = time.monotonic()
        if self.dead_since is None:
            self.dead_since = now
        elif now - self.dead_since >= STUCK_AFTER:
            log.warning("a segmentation process died while sending its result; ending its pool")
            self._feed()
            self.dead_since = None

    def result(self, fut: cf.Future[DocumentCut]) -> DocumentCut:
        """`fut.result()`, checking the pool while it waits."""
        while True:
            try:
                return fut.result(timeout=STUCK_AFTER / 4)
            except cf.TimeoutError:
                if fut.done():  # the document's own TimeoutError
                    raise
                self.check()

    def _feed(self) -> None:
        import select

        assert self.thread is not None and self.queue is not None
        fd = self.queue._writer.fileno()
        filler = bytes(select.PIPE_BUF)  # at most PIPE_BUF: never blocks once the pipe has room
        deadline = time.monotonic() + BROKEN_POOL_WAIT
        while self.thread.is_alive() and not getattr(self.pool, "_broken", False) and time.monotonic() < deadline:
            if select.select([], [fd], [], 0.1)[1]:
                os.write(fd, filler)


def stop_pool(executor: cf.Executor) -> None:
    """Shut the pool down and wait for its processes; a broken one as `end_broken_pool` does, and one
    whose reader is stuck (`ReaderWatch`) once unstuck."""
    if not isinstance(executor, cf.ProcessPoolExecutor):
        executor.shutdown(wait=True, cancel_futures=True)
        return
    watch = ReaderWatch(executor)
    watch.check()  # takes the pool's thread and queue before shutdown forgets them
    if not getattr(executor, "_broken", False):
        executor.shutdown(wait=False, cancel_futures=True)
        while watch.thread is not None and watch.thread.is_alive() and not getattr(executor, "_broken", False):
            watch.thread.join(0.2)
            watch.check()
    if getattr(executor, "_broken", False):
        end_broken_pool(executor, watch.processes, watch.thread)
