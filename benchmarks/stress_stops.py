"""Ctrl-C and SIGTERM at random moments of `digitreader submit`: does every stop leave a batch that the
same command finishes, without duplicates, and does every run end?

    .venv/bin/python benchmarks/stress_stops.py FOLDER --rounds 100 --workers 2 --signal INT
    .venv/bin/python benchmarks/stress_stops.py FOLDER --rounds 60 --workers 1 --signal TERM --latest 0.7
    .venv/bin/python benchmarks/stress_stops.py FOLDER --rounds 100 --workers 2 --at-returns

FOLDER holds a few scans (e.g. `digitreader synth /tmp/stops --pages 8`). A clean run first (in a home
of its own) says how many documents and pages the folder holds and how long a run takes after it
prints its batch id. Then, each round, in a fresh home: `submit FOLDER` is started, and once it has
printed its batch id the signal is sent after a random delay (uniform between --earliest and
--latest seconds, by default up to the clean run's length). Then the round checks:
- the stopped run ended within --timeout seconds (a run that does not is killed and counted "hung");
- its exit code and its batch's status agree: 130 (Ctrl-C) or 143 (SIGTERM) with the batch
  "interrupted", or "done" with every document read (the signal came as the batch was being closed,
  and was acted on once it was); 0, or death by the signal itself (it came as Python was exiting),
  with "done";
- the same command again exits 0, and then the database holds each file once, every document read,
  every batch "done", and the clean run's number of pages. With --arrive FILE, a new scan is put in (a
  copy of) the folder after the stop, as to a hot folder: the next run is another submission, which
  takes over the stopped batch's unread documents; then the same holds with one file and page more.

With --at-returns the moment is not a time but a point of the code: the run counts the Python function
returns of its main thread (a profile hook) and raises the signal itself at return number K, K drawn
uniformly between the clean run's return at which it printed the batch id and its last. A delay
mostly lands where a run spends its time (waiting for the pool, inside C code); this lands anywhere
the run's Python goes, the rare moments included (about 0.1 M returns a run on the tests' scans).

With --server URL (a PostgreSQL server, e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test) the
runs store into a new database on it each round (`DIGITREADER_DATABASE_URL`; made, brought to the
schema with `digitreader db upgrade`, and dropped after), not into the home's SQLite file.

One JSON object on stdout: the outcomes counted (exit code, batch status) and the rounds that broke a
rule, with the stopped run's stderr. Exit status 1 when any round did. Under load (another process
busy on every core) the moments that matter last longer and are hit more often.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

EXPECTED = {int(signal.SIGINT): 130, int(signal.SIGTERM): 143}

#: `--at-returns`: the CLI run with a profile hook that counts the Python function returns of its main
#: thread and raises the signal itself at return number STRESS_STOP_AT (0: never); at exit it says how
#: many returns it counted, and at which one it printed the batch id.
COUNTING_CLI = """
import atexit, os, signal, sys, threading
at, sig = int(os.environ["STRESS_STOP_AT"]), int(os.environ["STRESS_STOP_SIGNAL"])
count, shown_at, main_thread = 0, 0, threading.main_thread()
def profile(frame, event, arg):
    global count
    if event == "return" and threading.current_thread() is main_thread:
        count += 1
        if count == at:
            sys.setprofile(None)
            signal.raise_signal(sig)
sys.setprofile(profile)
atexit.register(lambda: sys.stderr.write(f"\\nstress-stops: {count} returns, batch id at {shown_at}\\n"))
import digitreader.cli.commands.submit as submit
show = submit._Bar.started
def started(self, *args, **kwargs):
    global shown_at
    shown_at = count
    return show(self, *args, **kwargs)
submit._Bar.started = started
from digitreader.cli.main import main
main(sys.argv[1:])
"""


def _env(home: Path, workers: int, url: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGITREADER_") or k == "DIGITREADER_DATA_DIR"}
    env.update(DIGITREADER_HOME=str(home), DIGITREADER_WORKERS=str(workers), PYTHONUNBUFFERED="1")
    if url is not None:
        env["DIGITREADER_DATABASE_URL"] = url
    return env


class _Database:
    """Where a run (or a round's two runs) stores: a temporary home and its SQLite file, or with
    `server` a new PostgreSQL database on that server, made (and brought to the schema) on entry; both
    removed on exit."""

    def __init__(self, server: str | None, prefix: str) -> None:
        self.server, self.prefix = server, prefix
        self.home = Path()
        self.url: str | None = None

    def __enter__(self) -> _Database:
        self.home = Path(tempfile.mkdtemp(prefix=self.prefix))
        if self.server is not None:
            from sqlalchemy import create_engine, text

            name = f"digitreader_stops_{secrets.token_hex(4)}"
            admin = create_engine(self.server, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            self.url = admin.url.set(database=name).render_as_string(hide_password=False)
            admin.dispose()
            up = subprocess.run([sys.executable, "-m", "digitreader", "db", "upgrade"], env=self.env(1),
                                capture_output=True, text=True, timeout=120)  # fmt: skip
            if up.returncode != 0:
                raise SystemExit(f"db upgrade failed on {self.url}:\n{up.stderr}")
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.home, ignore_errors=True)
        if self.server is not None and self.url is not None:
            from sqlalchemy import create_engine, text
            from sqlalchemy.engine import make_url

            admin = create_engine(self.server, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{make_url(self.url).database}" WITH (FORCE)'))
            admin.dispose()

    def env(self, workers: int) -> dict[str, str]:
        return _env(self.home, workers, self.url)

    def state(self) -> dict[str, Any]:
        if self.url is None:
            return _state(self.home / "digitreader.sqlite")
        from sqlalchemy import create_engine

        engine = create_engine(self.url)
        try:
            with engine.connect() as conn:
                return _counts(lambda sql: conn.exec_driver_sql(sql).fetchall())
        finally:
            engine.dispose()


def _submit(folder: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "digitreader", "submit", str(folder)], env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def _state(db: Path) -> dict[str, Any]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        return _counts(lambda sql: con.execute(sql).fetchall())


def _counts(rows: Any) -> dict[str, Any]:
    """What a database holds, by `rows(sql) -> list of tuples`."""
    n, distinct, pages = rows("select count(*), count(distinct sha256), coalesce(sum(page_count), 0) from documents")[0]
    unread = rows("select count(*) from documents where status not in ('done','needs_review')")[0][0]
    batches = [r[0] for r in rows("select status from batches order by id")]
    stored_pages = rows("select count(*) from pages")[0][0]
    return {"documents": n, "distinct": distinct, "pages": int(pages), "stored_pages": stored_pages,
            "unread": unread, "batches": batches}  # fmt: skip


def _command(folder: Path, counting: bool) -> list[str]:
    cli = ["-c", COUNTING_CLI] if counting else ["-m", "digitreader"]
    return [sys.executable, *cli, "submit", str(folder)]


def clean_run(
    folder: Path, workers: int, timeout: float, counting: bool = False, server: str | None = None
) -> dict[str, Any]:
    """The folder read once without a stop: its documents, pages, and seconds after the batch id (and
    with `counting`, the run's function returns, and the one at which it printed the batch id)."""
    with _Database(server, "stops-clean-") as db:
        env = {**db.env(workers), "STRESS_STOP_AT": "0", "STRESS_STOP_SIGNAL": "2"}
        proc = subprocess.Popen(_command(folder, counting), env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        assert proc.stdout is not None
        proc.stdout.readline()
        t = time.monotonic()
        _, err = proc.communicate(timeout=timeout)
        seconds = time.monotonic() - t
        if proc.returncode != 0:
            raise SystemExit(f"the clean run failed ({proc.returncode}):\n{err}")
        state = db.state()
        clean = {"documents": state["documents"], "pages": state["pages"], "seconds": seconds}
        if counting:
            words = err.rsplit("stress-stops: ", 1)[1].split()
            clean.update(returns=int(words[0]), batch_id_at=int(words[5]))  # "N returns, batch id at S"
        return clean


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _as_from_a_terminal() -> None:
    """A process group of its own, as a shell gives a foreground job, with Ctrl-C at its default."""
    os.setpgrp()
    _sigint_default()


def one_round(
    folder: Path,
    workers: int,
    sig: int,
    delay: float,
    clean: dict[str, Any],
    timeout: float,
    group: bool,
    at: int | None = None,
    server: str | None = None,
    arrive: Path | None = None,
) -> dict[str, Any]:
    """One stop: `delay` seconds after the batch id, or with `at`, at that function return of the run.
    With `arrive`, a new one-page scan is put in (a copy of) the folder after the stop."""
    with _Database(server, "stops-") as db, tempfile.TemporaryDirectory(prefix="stops-folder-") as scratch:
        if arrive is not None:  # a folder of its own, to which the scan arrives
            copy = Path(scratch) / "scans"
            shutil.copytree(folder, copy)
            folder = copy
        env = {**db.env(workers), "STRESS_STOP_AT": str(at or 0), "STRESS_STOP_SIGNAL": str(int(sig))}
        # SIGINT as from a terminal (a shell running this in the background may have ignored it).
        proc = subprocess.Popen(_command(folder, at is not None), env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=_as_from_a_terminal if group else _sigint_default)  # fmt: skip
        assert proc.stdout is not None
        proc.stdout.readline()  # the batch id: the batch exists
        if at is None:
            time.sleep(delay)
            if group:  # to every process of the run, as a terminal's Ctrl-C or systemd's stop sends it
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            broken = ["the stopped run did not end"]
            return {"delay": delay, "at": at, "rc": "hung", "status": None, "broken": broken, "err": err}
        stopped = db.state()
        status = stopped["batches"]
        rc = proc.returncode
        broken = []
        first = status[0] if status else None
        if rc == EXPECTED[int(sig)]:
            # "done": the signal came as the finished batch was being closed, and was acted on after.
            if first not in ("interrupted", "done") or (first == "done" and stopped["unread"]):
                broken.append(f"exit {rc} but the batch is {first!r} ({stopped['unread']} documents unread)")
        elif rc in (0, -sig):
            if first != "done":
                broken.append(f"exit {rc} but the batch is {first!r}")
        else:
            broken.append(f"exit {rc}")
        if arrive is not None:
            shutil.copy(arrive, folder / f"arrived{arrive.suffix}")
        again = _submit(folder, env, timeout)
        after = db.state()
        extra = 0 if arrive is None else 1  # the scan that arrived: one document of one page
        documents, pages = clean["documents"] + extra, clean["pages"] + extra
        if again.returncode != 0:
            broken.append(f"the same command again exited {again.returncode}: {again.stderr[-500:]}")
        if after["documents"] != documents or after["distinct"] != documents:
            broken.append(f"{after['documents']} documents ({after['distinct']} files) after, not {documents}")
        if after["unread"] or set(after["batches"]) != {"done"}:
            broken.append(f"unfinished after the second run: {after}")
        if after["pages"] != pages or after["stored_pages"] != pages:
            broken.append(f"{after['stored_pages']} pages stored after, not {pages}")
        return {
            "delay": round(delay, 3),
            "rc": rc,
            "status": first,
            "broken": broken,
            "err": err[-4000:] if broken else "",
        }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2, help="DIGITREADER_WORKERS (1: read in the run's own process)")
    ap.add_argument("--signal", choices=["INT", "TERM"], default="INT")
    ap.add_argument("--earliest", type=float, default=0.0, help="seconds after the batch id, at the earliest")
    ap.add_argument("--latest", type=float, default=None, help="at the latest (default: the clean run's length)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds a run may take before it counts as hung")
    ap.add_argument("--group", action="store_true", help="signal the run's whole process group (a terminal's Ctrl-C)")
    ap.add_argument("--at-returns", action="store_true",
                    help="stop at a random Python function return of the run (after its batch id), not "
                         "after a random delay: the run raises the signal itself, anywhere in its code")  # fmt: skip
    ap.add_argument("--server", help="a PostgreSQL server's URL: each round stores into a new database on it")
    ap.add_argument("--arrive", type=Path,
                    help="a one-page scan not in FOLDER, put in (a copy of) it after each stop: the next run is "
                         "another submission (a new batch), which must take over the stopped batch's unread "
                         "documents and leave every batch done, each file once")  # fmt: skip
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    sig = signal.Signals[f"SIG{args.signal}"]
    rng = random.Random(args.seed)
    if args.at_returns and args.group:
        ap.error("--at-returns raises the signal in the run's own process; --group sends it to every process")
    clean = clean_run(args.folder, args.workers, args.timeout, counting=args.at_returns, server=args.server)
    latest = clean["seconds"] if args.latest is None else args.latest
    outcomes: collections.Counter[str] = collections.Counter()
    broken = []
    for i in range(args.rounds):
        delay = rng.uniform(args.earliest, latest)
        at = rng.randint(clean["batch_id_at"], clean["returns"]) if args.at_returns else None
        r = one_round(args.folder, args.workers, sig, delay, clean, args.timeout, args.group, at, args.server,
                      args.arrive)  # fmt: skip
        outcomes[f"{r['rc']} {r['status']}"] += 1
        if r["broken"]:
            broken.append({"round": i, **r})
        where = f" at return {at}" if at is not None else f" after {delay:.3f} s"
        print(f"round {i + 1}/{args.rounds}{where}: exit {r['rc']}, batch {r['status']}"
              + (f"  BROKEN: {'; '.join(r['broken'])}" if r["broken"] else ""), file=sys.stderr)  # fmt: skip
    report = {"signal": sig.name, "group": args.group, "workers": args.workers, "rounds": args.rounds,
              "database": "postgresql" if args.server else "sqlite", "clean": clean,
              "delays": [args.earliest, latest], "outcomes": dict(outcomes), "broken": broken}  # fmt: skip
    print(json.dumps(report, indent=1))
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
