"""Segmentation benchmark on generated scans: quality against ground truth and time per stage.

    .venv/bin/python benchmarks/bench_segment.py --pages 200 --dpi 300 --format jpeg
    .venv/bin/python benchmarks/bench_segment.py --pages 200 --dpi 300 --format png --style rough

Generates the pages first (not timed; MNIST test digits from DIGITREADER_DATA_DIR), then for each
page times decoding (load_pages) and each segmentation stage on ONE thread (cv2.setNumThreads(1)),
as CPU time of this process (time.process_time: what one core spends, unaffected by other load on
a shared machine; wall time is reported too),
and scores the result (digitreader.synth.score): fields found, merged fields, digit positions found
and in order (a found box matches a true box when its centre lies inside it), blanks called blank.
Prints a JSON summary on stdout and a Markdown table row on stderr.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import cv2

# The digitreader of this checkout (a worktree of another commit too), not the installed one.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from digitreader import cpu  # noqa: E402
from digitreader.pipeline import native  # noqa: E402
from digitreader.pipeline.cut import cut_field  # noqa: E402
from digitreader.pipeline.fields import find_fields  # noqa: E402
from digitreader.pipeline.load import load_pages  # noqa: E402
from digitreader.pipeline.prepare import prepare_page  # noqa: E402
from digitreader.pipeline.segment import check_page, segment_page  # noqa: E402
from digitreader.settings import Settings  # noqa: E402
from digitreader.synth import generate, load_truth  # noqa: E402
from digitreader.synth.score import score_page, summary  # noqa: E402
from digitreader.types import PageCut  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=200)
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--dpi", type=int, default=300)
    ap.add_argument("--format", default="jpeg", choices=["png", "jpeg", "tiff", "pdf", "bmp", "mixed"])
    ap.add_argument("--kind", default="mixed", choices=["form", "cheque", "mixed"])
    ap.add_argument("--style", default="scan", choices=["clean", "scan", "rough"])
    ap.add_argument("--dir", type=Path, default=None, help="reuse/keep the generated pages here")
    ap.add_argument(
        "--max-reduction",
        type=int,
        default=1,
        choices=[1, 2, 4, 8],
        help="let the loader decode JPEGs reduced (load_pages(max_reduction=...)); 1 = full decode",
    )
    args = ap.parse_args()
    settings = Settings(pdf_dpi=args.dpi)
    cv2.setNumThreads(1)
    work = args.dir or Path(tempfile.mkdtemp(prefix="bench-segment-"))
    files = sorted(p for p in work.glob("scan-*") if not p.name.endswith(".json")) if args.dir else []
    if not files:
        t = time.perf_counter()
        files = generate(
            work,
            pages=args.pages,
            seed=args.seed,
            kind=args.kind,
            fmt=args.format,
            dpi=args.dpi,
            style=args.style,
            data_dir=settings.data_dir,
        )
        print(f"generated {args.pages} pages in {time.perf_counter() - t:.1f} s into {work}", file=sys.stderr)
    total: Counter[str] = Counter()
    per_page: list[dict[str, float]] = []
    wall: list[float] = []
    for f in files:
        truth = load_truth(f)
        c0, w0 = time.process_time(), time.perf_counter()
        for page, tp in zip(load_pages(f, settings, max_reduction=args.max_reduction), truth["pages"], strict=True):
            c1 = time.process_time()
            prepared = prepare_page(page, settings)
            c2 = time.process_time()
            check_page(page, prepared)
            regions = find_fields(prepared, settings)
            c3 = time.process_time()
            fields = tuple(cut_field(prepared, r, name=f"field-{i:02d}") for i, r in enumerate(regions, start=1))
            c4 = time.process_time()
            cut = PageCut(page.number, page.width, page.height, fields, prepared.skew_degrees)
            total += score_page(tp, cut)
            per_page.append(
                {
                    "decode": c1 - c0,
                    "prepare": c2 - c1,
                    "fields": c3 - c2,
                    "cut": c4 - c3,
                    "a4": tp["layout"] != "cheque",
                }
            )
            wall.append(time.perf_counter() - w0)
            c0, w0 = time.process_time(), time.perf_counter()
    assert callable(segment_page)  # the same stages segment_page runs, timed one by one
    stages = ["decode", "prepare", "fields", "cut"]
    ms = {k: round(1000 * statistics.mean(p[k] for p in per_page), 1) for k in stages}
    totals = [1000 * sum(p[k] for k in stages) for p in per_page]
    a4 = [t for t, p in zip(totals, per_page, strict=True) if p["a4"]]
    a4_ms = {k: round(1000 * statistics.mean(p[k] for p in per_page if p["a4"]), 1) for k in stages} if a4 else {}
    result = {
        "pages": len(per_page),
        "dpi": args.dpi,
        "format": args.format,
        "style": args.style,
        "max_reduction": args.max_reduction,
        **summary(total),
        "ms_per_page": ms,
        "ms_total_mean": round(statistics.mean(totals), 1),
        "ms_total_p95": round(sorted(totals)[int(0.95 * (len(totals) - 1))], 1),
        "ms_wall_mean": round(1000 * statistics.mean(wall), 1),
        "a4_pages": len(a4),
        "ms_per_a4_page": a4_ms,
        "ms_total_a4_mean": round(statistics.mean(a4), 1) if a4 else None,
        "machine": f"{cpu.summary()}, Python {platform.python_version()}, opencv {cv2.__version__}, 1 thread",
        "c_halves_missing": native.missing(),  # the stages that ran in Python (pipeline/native.py)
    }
    print(json.dumps(result, indent=1))
    r = result
    print(
        f"| {r['pages']} | {args.dpi} | {args.format} | {args.style} | {r['fields_found_pct']} | {r['merged_fields']} "
        f"| {r['positions_found_pct']} | {r['positions_in_order_pct']} | {r['blanks_called_blank_pct']} "
        f"| {ms['decode']} | {ms['prepare']} | {ms['fields']} | {ms['cut']} | {r['ms_total_mean']} "
        f"| {r['ms_total_a4_mean']} |",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
