"""A hot folder submitted again: how long a `digitreader submit` takes that finds every file read before.

    .venv/bin/python benchmarks/bench_rerun.py FOLDER --rounds 5            # page cache warm and cold
    .venv/bin/python benchmarks/bench_rerun.py FOLDER --pythonpath /tmp/base/main   # another checkout's code

FOLDER holds scans (e.g. `digitreader synth /tmp/hot --pages 200 --kind form`). The folder is read
once into a fresh SQLite database under --home (not timed); then each round times a submit of the
same folder, which skips every file: once with the files in the page cache ("warm"), once after
they were evicted from it with posix_fadvise(DONTNEED) ("cold": a file that is read comes from the
disk, as on a network share or a folder larger than the memory). Wall seconds and CPU seconds of the
submit process (user + system, with its children) and the megabytes it read from storage (its
rusage's blocks in: reads served by the page cache are not counted).

`--pythonpath` runs the CLI of another checkout (a `git worktree` of an older revision), in a home of
its own, for before/after comparisons on the same machine, alternated round by round.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def evict(folder: Path) -> int:
    """Drop the folder's files from the page cache (no root needed); returns their bytes."""
    total = 0
    for p in folder.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                total += os.fstat(fd).st_size
            finally:
                os.close(fd)
    return total


def submit(folder: Path, home: Path, pythonpath: str | None) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGITREADER_")}
    env["DIGITREADER_HOME"] = str(home)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    # Run in the checkout's folder: `python -m` puts the working folder first on the module path.
    args = [sys.executable, "-m", "digitreader", "submit", "-q", str(folder.resolve())]
    proc = subprocess.Popen(
        args, env=env, cwd=pythonpath or ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _, err = proc.communicate()
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"submit failed ({proc.returncode}): {err}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    read_mb = (after.ru_inblock - before.ru_inblock) * 512 / 1e6  # blocks of 512 bytes read from storage
    return {"wall_s": wall, "cpu_s": cpu, "read_mb": read_mb}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--home", type=Path, default=Path("/tmp/digitreader-bench-rerun"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pythonpath", help="another checkout to compare with (its CLI, in a home of its own)")
    ap.add_argument("--json", type=Path, help="write the rounds here")
    args = ap.parse_args()

    codes = {"this": None} | ({"other": args.pythonpath} if args.pythonpath else {})
    homes = {name: args.home / name for name in codes}
    for name, home in homes.items():
        shutil.rmtree(home, ignore_errors=True)
        submit(args.folder, home, codes[name])  # the first read, not timed
    files = sum(1 for p in args.folder.rglob("*") if p.is_file() and not p.name.endswith(".json"))
    size = sum(p.stat().st_size for p in args.folder.rglob("*") if p.is_file())
    print(f"{files} scans, {size / 1e6:.0f} MB; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores", file=sys.stderr)  # fmt: skip
    rows: list[dict[str, object]] = []
    for r in range(args.rounds):
        for cache in ("warm", "cold"):
            for name in codes if r % 2 == 0 else reversed(list(codes)):
                if cache == "cold":
                    evict(args.folder)
                m = submit(args.folder, homes[name], codes[name])
                rows.append({"round": r, "code": name, "cache": cache, **m})
                print(f"round {r} {cache:4s} {name:5s}: {m['wall_s']:.2f} s wall, {m['cpu_s']:.2f} s CPU, "
                      f"{m['read_mb']:.0f} MB read", file=sys.stderr)  # fmt: skip
    print("| code | page cache | wall s (median, min–max) | CPU s (median) | MB read (median) |")
    print("| --- | --- | --- | ---: | ---: |")
    for name in codes:
        for cache in ("warm", "cold"):
            sel = [x for x in rows if x["code"] == name and x["cache"] == cache]
            wall = [float(x["wall_s"]) for x in sel]  # type: ignore[arg-type]
            cpu = [float(x["cpu_s"]) for x in sel]  # type: ignore[arg-type]
            mb = [float(x["read_mb"]) for x in sel]  # type: ignore[arg-type]
            print(f"| {name} | {cache} | {statistics.median(wall):.2f} ({min(wall):.2f}–{max(wall):.2f}) | "
                  f"{statistics.median(cpu):.2f} | {statistics.median(mb):.0f} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
