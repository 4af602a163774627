"""Distributed vs embedded throughput on the same pages, the Celery/broker overhead per page, and
how crops should travel between the pools (message bytes vs the database).

    .venv/bin/python benchmarks/bench_workers.py --pages 16
    (needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379; a fresh database per run)

Runs, each on a fresh PostgreSQL database with the same generated pages (300-dpi A4 forms):
- embedded `process_batch` with 1 and 2 segmentation processes;
- distributed: `digitreader worker --pool page -c 1` (then -c 2) + one inference worker, both at
  the worker's default log level (INFO), started and idle before the clock starts; time from
  `submit_batch` to the batch finished.

Overhead, from the page task traces the page workers log (`distributed.page_trace`: wall start/end
of each task body, its setup/decode/segment/strips/encode/publish/done seconds):
- per page: (task wall - decode - segment) + the gap since the previous task of the same process
  (Celery's own work between tasks: ack, fetch, dispatch), as a share of decode + segment;
- fixed per batch: submit -> first task start, last task end -> batch finished (inference flush
  interval, storing the last documents); it does not grow with the number of pages;
- the old definition, 1 - (sum of decode + segment seconds) / (wall time x page processes), which
  lumps all of the above together, kept so that numbers stay comparable.
page processes x (batch finished - submit) = decode + segment + in-task rest + gaps + each
process's idle time before its first and after its last task (the report shows the residual).

One long document instead (`--long-pdf`): ONE PDF of --pages A4 forms, through the distributed
pools, cut whole (DIGITREADER_PART_PAGES=0) and in parts (--part-pages, default 4), alternated
--rounds times; seconds from `submit_batch` to the batch finished:

    .venv/bin/python benchmarks/bench_workers.py --long-pdf --pages 32 --procs 2 --rounds 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, select, text  # noqa: E402

from digitreader import cpu  # noqa: E402
from digitreader import distributed as dist  # noqa: E402
from digitreader.db import Batch, Document, session_scope  # noqa: E402
from digitreader.db.migrate import upgrade  # noqa: E402
from digitreader.db.session import dispose_engines, get_engine, make_engine  # noqa: E402
from digitreader.settings import Settings  # noqa: E402

PG_ADMIN = os.environ.get("DIGITREADER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def fresh_db() -> str:
    name = f"digitreader_bench_{secrets.token_hex(4)}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    admin.dispose()
    eng = make_engine(url)
    upgrade(eng)
    eng.dispose()
    return url


def drop_db(url: str) -> None:
    dispose_engines()
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
    admin.dispose()


def seg_seconds(settings: Settings, batch_id: int) -> float:
    with session_scope(settings) as s:
        rows = s.scalars(select(Document.timings).where(Document.batch_id == batch_id)).all()
    return sum(float((t or {}).get("decode", 0)) + float((t or {}).get("segment", 0)) for t in rows)


def run_embedded(files: list[str], procs: int, home: Path) -> dict[str, Any]:
    from digitreader.pipeline.process import load_predictor, process_batch

    url = fresh_db()
    try:
        settings = Settings(_env_file=None, home=home, database_url=url, workers=procs)  # type: ignore[call-arg]
        pred = load_predictor(settings)
        rep = process_batch(files, settings, predictor=pred)
        return {"mode": "embedded", "procs": procs, "seconds": rep.seconds, "pages_per_s": len(files) / rep.seconds,
                "segment_seconds": seg_seconds(settings, rep.batch_id), "status": rep.status}  # fmt: skip
    finally:
        drop_db(url)


TRACE_MARK = "page task "


def read_traces(log: Path) -> list[dict[str, float]]:
    """The page task traces (`distributed.page_trace`, JSON at the end of "segmented:" lines)."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        i = line.find(TRACE_MARK + "{")
        if i >= 0:
            out.append(json.loads(line[i + len(TRACE_MARK) :]))
    return out


def decompose(traces: list[dict[str, float]], submitted: float, finished: float, procs: int) -> dict[str, Any]:
    """Split the page processes' time (procs x (finished - submitted)) into segmentation, the rest
    of each task, the gaps between tasks of one process, and the fixed start/drain of the batch."""
    by_pid: dict[float, list[dict[str, float]]] = {}
    for t in traces:
        by_pid.setdefault(t["pid"], []).append(t)
    seg = sum(t["decode"] + t["segment"] for t in traces)
    task_wall = sum(t["end"] - t["start"] for t in traces)
    parts = {k: sum(t[k] for t in traces) for k in ("setup", "strips", "encode", "publish", "done")}
    parts["rest of the task"] = task_wall - seg - sum(parts.values())
    gaps = edges = 0.0
    for tasks in by_pid.values():
        tasks.sort(key=lambda t: t["start"])
        gaps += sum(b["start"] - a["end"] for a, b in zip(tasks, tasks[1:], strict=False))
        edges += (tasks[0]["start"] - submitted) + (finished - tasks[-1]["end"])
    parts["gaps between tasks"] = gaps
    span = finished - submitted
    first = min(t["start"] for t in traces)
    last = max(t["end"] for t in traces)
    n = len(traces)
    return {
        "tasks": n,
        "processes_seen": len(by_pid),
        "segment_seconds": seg,
        "per_page_overhead_share": (task_wall - seg + gaps) / seg,
        # The fields' strips for the review page are cut in the embedded mode too (segment_document).
        "per_page_overhead_share_without_strips": (task_wall - seg + gaps - parts["strips"]) / seg,
        "per_page_ms": {k: 1000 * v / n for k, v in parts.items()},
        "segment_ms_per_page": 1000 * seg / n,
        "fixed_start_s": first - submitted,  # submit -> first task starts
        "fixed_drain_s": finished - last,  # last task ends -> batch finished
        "idle_at_edges_s": edges,  # summed over the page processes
        "unaccounted_s": procs * span - (task_wall + gaps + edges),
        "span_s": span,
        "bytes_per_page": sum(t["bytes"] for t in traces) / n,
    }


@contextlib.contextmanager
def pools(env: dict[str, str], settings: Settings, procs: int, logs: Path) -> Iterator[None]:
    """A page worker (`procs` processes) and an inference worker on `env`'s database and broker, at
    the worker's default log level, up and idle when the block starts; stopped after it."""
    workers = []
    try:
        for pool, c in (("page", procs), ("infer", 1)):
            log = open(logs / f"{pool}-{procs}.log", "wb")  # noqa: SIM115
            workers.append(subprocess.Popen([sys.executable, "-m", "digitreader", "worker", "--pool", pool, "-c",
                                             str(c), "--loglevel", "INFO"], cwd=ROOT, env=env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True))  # fmt: skip
        end = time.monotonic() + 120
        while time.monotonic() < end:  # both pools up and idle
            st = dist.broker_status(settings)
            if {q for w in st["workers"] for q in w["queues"]} >= {"pages", "infer"}:
                break
            time.sleep(0.5)
        time.sleep(2)
        yield
    finally:
        for w in workers:
            os.killpg(w.pid, signal.SIGTERM)
        for w in workers:
            try:
                w.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(w.pid, signal.SIGKILL)


def pool_env(home: Path, url: str, broker: str, **extra: Any) -> tuple[dict[str, str], Settings]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGITREADER_")}
    env.update(DIGITREADER_HOME=str(home), DIGITREADER_DATABASE_URL=url, DIGITREADER_BROKER_URL=broker,
               PYTHONPATH=str(ROOT), **{f"DIGITREADER_{k.upper()}": str(v) for k, v in extra.items()})  # fmt: skip
    settings = Settings(_env_file=None, home=home, database_url=url, broker_url=broker, **extra)  # type: ignore[call-arg]
    return env, settings


def run_distributed(files: list[str], procs: int, home: Path, broker: str, logs: Path) -> dict[str, Any]:
    url = fresh_db()
    env, settings = pool_env(home, url, broker)
    page_log = logs / f"page-{procs}.log"
    try:
        with pools(env, settings, procs, logs):
            submitted = time.time()
            t0 = time.perf_counter()
            sub = dist.submit_batch(files, settings)
            submit_s = time.perf_counter() - t0  # hashing, registering (committed), then publishing every page task
            prog = dist.wait_for_batch(sub.batch_id, settings, poll=0.1, timeout=900)
            wall = time.perf_counter() - t0
        seg = seg_seconds(settings, sub.batch_id)
        with session_scope(settings) as s:
            finished_at = s.scalar(select(Batch.finished_at).where(Batch.id == sub.batch_id))
        assert finished_at is not None
        row: dict[str, Any] = {"mode": "distributed", "procs": procs, "seconds": wall, "pages_per_s": len(files) / wall,
                               "segment_seconds": seg, "overhead_share": 1 - seg / (wall * procs),
                               "status": prog.status}  # fmt: skip
    finally:
        drop_db(url)
    traces = read_traces(page_log)
    if len(traces) != len(files):
        raise RuntimeError(f"{len(traces)} page task traces in {page_log} for {len(files)} pages")
    row["decomposition"] = {**decompose(traces, submitted, finished_at.timestamp(), procs), "submit_s": submit_s}
    return row


def run_long(pdf: str, pages: int, procs: int, part_pages: int, home: Path, broker: str, logs: Path) -> dict[str, Any]:
    """One long PDF through the distributed pools, with DIGITREADER_PART_PAGES=`part_pages` (0: whole)."""
    url = fresh_db()
    env, settings = pool_env(home, url, broker, part_pages=part_pages)
    try:
        with pools(env, settings, procs, logs):
            t0 = time.perf_counter()
            sub = dist.submit_batch([pdf], settings)
            prog = dist.wait_for_batch(sub.batch_id, settings, poll=0.1, timeout=900)
            wall = time.perf_counter() - t0
        stored = dist.batch_progress(get_engine(settings), sub.batch_id).pages  # disposed by drop_db
    finally:
        drop_db(url)
    split = "queued in" in (logs / f"page-{procs}.log").read_text(errors="replace")
    return {"mode": "one long PDF", "procs": procs, "part_pages": part_pages, "split": split, "pages": stored,
            "seconds": wall, "pages_per_s": pages / wall, "status": prog.status}  # fmt: skip


def long_pdf(args: argparse.Namespace, base: Path) -> list[dict[str, Any]]:
    """`--long-pdf`: whole and in parts, alternated, on every --procs count."""
    from digitreader.synth import generate

    made = generate(base / "long", pages=args.pages, seed=77, fmt="pdf", kind="form", per_file=args.pages,
                    data_dir=Path(args.data_dir))  # fmt: skip
    (pdf,) = [str(f) for f in made if str(f).endswith(".pdf")]
    rows = []
    for procs in (int(p) for p in args.procs.split(",")):
        for r in range(args.rounds):
            for part_pages in (0, args.part_pages):
                logs = base / f"logs-{procs}-{r}-{part_pages}"
                logs.mkdir(parents=True)
                row = run_long(pdf, args.pages, procs, part_pages, base / "home-long", args.broker, logs)
                rows.append({**row, "round": r + 1, "loadavg_after": loadavg()})
                print(rows[-1], file=sys.stderr)
    return rows


def long_report(rows: list[dict[str, Any]]) -> str:
    lines = ["| one long PDF, distributed | page processes | round | seconds, submit to finished | pages/s |",
             "| --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for r in rows:
        how = f"in parts of {r['part_pages']}" if r["part_pages"] else "whole"
        lines.append(f"| {how} | {r['procs']} | {r['round']} | {r['seconds']:.2f} | {r['pages_per_s']:.2f} |")
    return "\n".join(lines)


def transport(files: list[str], broker: str) -> dict[str, Any]:
    """Per page: crops as bytes in the message (encode, base64, Redis round trip, decode) vs
    through PostgreSQL (insert header + raw crops, commit, select, delete, rebuild)."""
    import redis

    from digitreader.pipeline.process import segment_document
    from workers.codec import decode_cut, encode_cut, from_text, to_text

    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    cuts = [segment_document(f, settings) for f in files]
    r = redis.Redis.from_url(broker)
    key = f"bench:transport:{secrets.token_hex(4)}"
    t = time.perf_counter()
    sizes = []
    for c in cuts:
        msg = to_text(encode_cut(c))
        sizes.append(len(msg))
        r.lpush(key, msg)
        # redis-py types a reply as every shape it can take; without decode_responses, just pushed: bytes
        decode_cut(from_text(r.rpop(key).decode()))  # type: ignore[union-attr]
    msg_s = (time.perf_counter() - t) / len(cuts)
    url = fresh_db()
    eng = make_engine(url)
    try:
        with eng.begin() as conn:
            conn.execute(text("CREATE TABLE staging (id serial PRIMARY KEY, header jsonb, crops bytea)"))
        t = time.perf_counter()
        for cut in cuts:
            crops = b"".join(p.crops().tobytes() for p in cut.pages)
            header = json.dumps({"path": cut.path, "pages": len(cut.pages)})
            with eng.begin() as conn:
                i = conn.execute(text("INSERT INTO staging (header, crops) VALUES (:h, :c) RETURNING id"),
                                 {"h": header, "c": crops}).scalar()  # fmt: skip
            with eng.begin() as conn:
                row = conn.execute(text("SELECT header, crops FROM staging WHERE id = :i"), {"i": i}).one()
                conn.execute(text("DELETE FROM staging WHERE id = :i"), {"i": i})
            assert len(row.crops) == len(crops)
        db_s = (time.perf_counter() - t) / len(cuts)
    finally:
        eng.dispose()
        drop_db(url)
    raw = sum(c.crops for c in cuts) * 784 / len(cuts)
    return {"message_ms_per_page": 1000 * msg_s, "database_ms_per_page": 1000 * db_s,
            "message_bytes_per_page": sum(sizes) / len(sizes), "raw_crop_bytes_per_page": raw}  # fmt: skip


def report(rows: list[dict[str, Any]]) -> str:
    """Markdown tables: the classic comparison, then the decomposition of the distributed runs."""
    lines = ["| mode | page processes | seconds | pages/s | old overhead: 1 - seg/(wall x procs) | load before/after |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    emb = {r["procs"]: r["seconds"] for r in rows if r["mode"] == "embedded"}
    for r in rows:
        old = 1 - r["segment_seconds"] / (r["seconds"] * r["procs"])
        vs = ""
        if r["mode"] == "distributed" and r["procs"] in emb:
            vs = f" ({r['seconds'] / emb[r['procs']]:.3f}x embedded)"
        load = "/".join(f"{x[0]:.1f}" for x in (r.get("loadavg_before"), r.get("loadavg_after")) if x)
        lines.append(f"| {r['mode']} | {r['procs']} | {r['seconds']:.1f}{vs} | {r['pages_per_s']:.2f} | "
                     f"{100 * old:.1f} % | {load} |")  # fmt: skip
    dis = [r for r in rows if r["mode"] == "distributed"]
    if dis:
        keys = list(dis[0]["decomposition"]["per_page_ms"])
        lines += ["", "| distributed, page processes | " + " | ".join(str(r["procs"]) for r in dis) + " |",
                  "| --- |" + " ---: |" * len(dis)]  # fmt: skip

        def _share(d: dict[str, Any]) -> str:
            return f"**{100 * d['per_page_overhead_share']:.1f} %**"

        def add(name: str, fmt: Any) -> None:
            lines.append(f"| {name} | " + " | ".join(fmt(r["decomposition"]) for r in dis) + " |")

        add("decode + segment, ms/page", lambda d: f"{d['segment_ms_per_page']:.1f}")
        for k in keys:
            add(f"{k}, ms/page", lambda d, k=k: f"{d['per_page_ms'][k]:.2f}")
        add("**per-page overhead**: (task rest + gap) / segment", _share)
        add("per-page overhead without strips (embedded cuts them too)",
            lambda d: f"{100 * d['per_page_overhead_share_without_strips']:.1f} %")  # fmt: skip
        add("fixed: submit -> first task, s", lambda d: f"{d['fixed_start_s']:.2f}")
        add("submit_batch call (hash, register, commit, publish all), s", lambda d: f"{d['submit_s']:.2f}")
        add("fixed: last task end -> batch finished, s", lambda d: f"{d['fixed_drain_s']:.2f}")
        add("page processes idle before first / after last task, s (sum)", lambda d: f"{d['idle_at_edges_s']:.2f}")
        add("unaccounted (should be ~0), s", lambda d: f"{d['unaccounted_s']:.3f}")
        add("message bytes per page", lambda d: f"{d['bytes_per_page']:.0f}")
    return "\n".join(lines)


def loadavg() -> list[float] | None:
    """1, 5 and 15-minute load averages (Linux), to tell a quiet machine from a shared one."""
    p = Path("/proc/loadavg")
    return [float(x) for x in p.read_text().split()[:3]] if p.exists() else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=16)
    ap.add_argument("--procs", default="1,2", help="page process counts to run, comma-separated")
    ap.add_argument("--no-embedded", action="store_true", help="distributed runs only")
    ap.add_argument("--no-transport", action="store_true", help="skip the message-vs-database comparison")
    ap.add_argument("--broker", default="redis://127.0.0.1:6379/14", help="an otherwise unused Redis database")
    default_data = os.environ.get("DIGITREADER_DATA_DIR", str(ROOT.parent / "shared" / "datasets"))
    ap.add_argument("--data-dir", default=default_data)
    ap.add_argument("--json", default=None)
    ap.add_argument("--logs", default=None, help="keep the workers' logs (with the page task traces) in this folder")
    ap.add_argument("--long-pdf", action="store_true", help="one PDF of --pages pages, whole and in parts")
    ap.add_argument("--part-pages", type=int, default=4, help="--long-pdf: pages per part")
    ap.add_argument("--rounds", type=int, default=2, help="--long-pdf: alternated runs of each")
    args = ap.parse_args(argv)
    from digitreader.synth import generate

    load_before = loadavg()
    with tempfile.TemporaryDirectory(prefix="bench_workers_") as tmp:
        base = Path(tmp)
        if args.long_pdf:
            long_rows = long_pdf(args, base)
            print(json.dumps({"pages": args.pages, "machine": cpu.summary(), "runs": long_rows}, indent=1))
            print()
            print(long_report(long_rows))
            if args.json:
                Path(args.json).write_text(json.dumps({"pages": args.pages, "runs": long_rows}, indent=1))
            return 0
        files = [str(f) for f in generate(base / "scans", pages=args.pages, seed=77, fmt="png", kind="form",
                                          data_dir=Path(args.data_dir))]  # fmt: skip
        files = [f for f in files if f.endswith(".png")]
        logs = Path(args.logs) if args.logs else base / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        rows = []
        for procs in (int(p) for p in args.procs.split(",")):
            for mode in ("embedded", "distributed"):
                if mode == "embedded" and args.no_embedded:
                    continue
                before = loadavg()
                if mode == "embedded":
                    row = run_embedded(files, procs, base / f"home-e{procs}")
                else:
                    row = run_distributed(files, procs, base / f"home-d{procs}", args.broker, logs)
                rows.append({**row, "loadavg_before": before, "loadavg_after": loadavg()})
                print(rows[-1], file=sys.stderr)
        tr = None if args.no_transport else transport(files, args.broker)
        print(tr, file=sys.stderr)
    load_after = loadavg()
    result = {"pages": len(files), "machine": cpu.summary(), "loadavg_before": load_before,
              "loadavg_after": load_after, "runs": rows, "transport": tr}  # fmt: skip
    print(json.dumps(result, indent=1))
    print()
    print(report(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
