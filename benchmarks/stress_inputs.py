"""Damaged scans: each sample file cut short, bits flipped, a range zeroed or randomised, then read the
way a batch reads it. Does every damaged file either read or fail with a specific error, and does
nothing crash?

    .venv/bin/python benchmarks/stress_inputs.py FOLDER --count 600
    .venv/bin/python benchmarks/stress_inputs.py FOLDER --count 200 --seed 7 --keep /tmp/damaged

FOLDER holds sample scans of every kind (PNG, JPEG, TIFF, multi-page TIFF, PDF; e.g. from `digitreader
synth`). Mutation k (from --seed on) picks a file and a damage with a random generator seeded by k, so
a mutation is made again from its number alone. Each is read by `document.segment_document` (loading,
preparing, finding fields, cutting: what a pool process does) in a child process that reads --batch
of them in turn: a child that dies (a crash in C code) is reported with the mutation it was reading,
and the next child goes on after it.

One JSON object on stdout: outcomes counted by damage and error code ("read" when the file was read,
"read, warned" when it was read with the image decoder's warnings: `DocumentCut.warnings`),
the mutations that ended in "internal" (an error no check foresaw: a bug) and those that crashed.
Exit status 1 when there were any. --keep keeps the damaged files of those.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".pdf", ".bmp")
DAMAGES = ("cut", "flip", "flip-head", "zero", "random")


def damaged(sources: list[Path], k: int) -> tuple[Path, str, bytes]:
    """Mutation k: (the file it damages, the damage, the damaged bytes)."""
    rng = random.Random(k)
    source = rng.choice(sources)
    data = bytearray(source.read_bytes())
    damage = rng.choice(DAMAGES)
    if damage == "cut":
        data = data[: rng.randrange(1, len(data))]
    elif damage == "flip":  # anywhere: mostly in the pixel data
        for _ in range(rng.choice([1, 2, 8, 64])):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
    elif damage == "flip-head":  # a few bytes of the headers and first chunks
        for _ in range(rng.choice([1, 2, 4])):
            data[rng.randrange(min(len(data), 512))] = rng.randrange(256)
    else:
        i, n = rng.randrange(len(data)), rng.randrange(1, 4096)
        data[i : i + n] = bytes(n) if damage == "zero" else rng.randbytes(n)
    return source, damage, bytes(data)


def child(folder: Path, first: int, count: int, scratch: Path) -> None:
    """Read mutations first..first+count-1, one JSON line each (a line before each, to name a crash)."""
    from digitreader.pipeline.document import segment_document
    from digitreader.settings import get_settings

    settings = get_settings()
    sources = _sources(folder)
    for k in range(first, first + count):
        source, damage, data = damaged(sources, k)
        path = scratch / f"damaged-{k}{source.suffix}"
        path.write_bytes(data)
        print(json.dumps({"k": k, "reading": True}), flush=True)
        cut = segment_document(path, settings, time_limit=120)
        read = "read, warned" if cut.warnings else "read"  # the decoder said the data is damaged, or not
        line = {"k": k, "source": source.name, "damage": damage, "code": cut.error_code or read}
        if cut.error_code == "internal":
            line["message"] = (cut.error_message or "")[:300]
        print(json.dumps(line), flush=True)
        path.unlink()


def _sources(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0, help="the first mutation's number")
    ap.add_argument("--batch", type=int, default=25, help="mutations a child process reads")
    ap.add_argument("--keep", type=Path, help="a folder for the damaged files that failed 'internal' or crashed")
    ap.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not _sources(args.folder):
        ap.error(f"no scans in {args.folder}")
    if args.child:
        scratch = Path(tempfile.mkdtemp(prefix="damaged-"))
        try:
            child(args.folder, args.child[0], args.child[1], scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return 0
    outcomes: collections.Counter[str] = collections.Counter()
    internal, crashed = [], []
    k, end = args.seed, args.seed + args.count
    while k < end:
        cmd = [sys.executable, __file__, str(args.folder), "--child", str(k), str(min(args.batch, end - k))]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
        done = [x for x in lines if "code" in x]
        for x in done:
            outcomes[f"{x['damage']}: {x['code']}"] += 1
            if x["code"] == "internal":
                internal.append(x)
        k = done[-1]["k"] + 1 if done else k
        if proc.returncode != 0:  # died reading mutation k
            crashed.append({"k": k, "returncode": proc.returncode, "stderr": proc.stderr[-1000:]})
            k += 1
        print(f"{k - args.seed}/{args.count} read", file=sys.stderr)
    if args.keep and (internal or crashed):
        args.keep.mkdir(parents=True, exist_ok=True)
        for x in internal + crashed:
            source, _, data = damaged(_sources(args.folder), x["k"])
            (args.keep / f"damaged-{x['k']}{source.suffix}").write_bytes(data)
    report = {"count": args.count, "seed": args.seed, "outcomes": dict(sorted(outcomes.items())),
              "internal": internal, "crashed": crashed}  # fmt: skip
    print(json.dumps(report, indent=1))
    return 1 if internal or crashed else 0


if __name__ == "__main__":
    sys.exit(main())
