"""End-to-end benchmark of the embedded pipeline on generated pages with ground truth.

    .venv/bin/python benchmarks/bench_e2e.py --pages 200            # quality + throughput
    .venv/bin/python benchmarks/bench_e2e.py --pages 200 --json out.json
    .venv/bin/python benchmarks/bench_e2e.py --pages 200 --plot docs/e2e-threshold.png   # finer sweep, drawn
    .venv/bin/python benchmarks/bench_e2e.py --pages 200 --seed 2024 2025 2026 --plot-sets sets.png  # pooled
    .venv/bin/python benchmarks/bench_e2e.py --pages 96 --kind form --format pdf --per-file 96  # one long PDF
    .venv/bin/python benchmarks/bench_e2e.py --pages 200 --turned 0.5   # half the pages upside down or on a side

Generates pages with `digitreader.synth` (cached under --cache, never in the repo), runs
`process_batch` into a fresh SQLite database (all cores), then scores the stored results against the
ground truth:

- digit accuracy: truth non-blank digits read with the right label (missed ones count as wrong)
- field exact match: stored value == truth value
- blank accuracy: cells whose blank/non-blank decision matches the truth
- error among unflagged: wrong labels among digits the pipeline did not flag
- share flagged: flagged digits among digits read
- for digit accuracy, error among unflagged and share flagged, a 95 % interval (Wilson): one set of
  pages is a sample, and a rate a few digits off a target may be within it
- throughput: pages/s end to end (model load excluded), and per-page time / decode-only time, against
  this pipeline's own decoder and against OpenCV's (`cv2.imread`).

Fields and digits are matched to the truth by the issue's rule: a found box matches a true box when
its centre lies inside it, or the true box's centre inside the found one (page-as-submitted
pixels); the nearest such centre wins.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from digitreader import cpu  # noqa: E402
from digitreader.db import session_scope  # noqa: E402
from digitreader.db.session import get_engine  # noqa: E402
from digitreader.pipeline import native  # noqa: E402
from digitreader.settings import Settings  # noqa: E402
from digitreader.synth.score import best_match  # noqa: E402

Match = tuple[dict[str, Any], dict[str, Any] | None, list[tuple[dict[str, Any], dict[str, Any] | None]]]


def match_page(truth_page: dict[str, Any], fields: list[dict[str, Any]]) -> tuple[list[Match], int]:
    """Each true field of a page with the stored field matched to it (None: not found), and each of
    its true digits with the stored digit matched to it (None: missed); and how many stored fields
    match no true field. Export JSON shape; the rule is the issue's (`best_match`)."""
    used: set[int] = set()
    out: list[Match] = []
    for tf in truth_page["fields"]:
        i = best_match(tf["bbox"], fields, lambda f: f["bbox"], used)
        if i is None:
            out.append((tf, None, [(td, None) for td in tf["digits"]]))
            continue
        used.add(i)
        f = fields[i]
        dused: set[int] = set()
        pairs: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
        for td in tf["digits"]:
            j = best_match(td["bbox"], f["digits"], lambda d: d["bbox"], dused)
            if j is not None:
                dused.add(j)
            pairs.append((td, f["digits"][j] if j is not None else None))
        out.append((tf, f, pairs))
    return out, len(fields) - len(used)


#: The counts `score_page` makes of each page (added up over a batch by `score_batch`).
PAGE_COUNTS = ("truth_fields", "fields_found", "fields_exact", "truth_digits", "digits_right", "cells",
               "blank_right", "read", "flagged", "unflagged", "unflagged_wrong", "extra_fields")  # fmt: skip


def score_page(truth_page: dict[str, Any], fields: list[dict[str, Any]]) -> dict[str, int]:
    """Compare one page's stored fields (export JSON shape) with its truth."""
    s = dict.fromkeys(PAGE_COUNTS, 0)
    matches, s["extra_fields"] = match_page(truth_page, fields)
    for tf, f, pairs in matches:
        s["truth_fields"] += 1
        s["truth_digits"] += sum(1 for d in tf["digits"] if d["label"] is not None)
        s["cells"] += len(tf["digits"]) if tf["kind"] == "boxes" else 0
        if f is None:
            continue
        s["fields_found"] += 1
        s["fields_exact"] += int(f["value"] == tf["value"])
        for td, d in pairs:
            if d is None:
                continue
            if tf["kind"] == "boxes":
                s["blank_right"] += int((d["label"] is None) == (td["label"] is None))
            if td["label"] is not None and d["label"] == td["label"]:
                s["digits_right"] += 1
            if d["label"] is not None and td["label"] is not None and not d["needs_review"]:
                s["unflagged_wrong"] += int(d["label"] != td["label"])
        for d in f["digits"]:
            if d["label"] is None:
                continue
            s["read"] += 1
            if d["needs_review"]:
                s["flagged"] += 1
            else:
                s["unflagged"] += 1
    return s


def score_batch(export: dict[str, Any], truth_dir: Path) -> dict[str, Any]:
    totals: dict[str, int] = {}
    failed = 0
    for doc in export["documents"]:
        truth = json.loads((truth_dir / (Path(doc["path"]).name.rsplit(".", 1)[0] + ".truth.json")).read_text())
        if doc["status"] == "failed":
            failed += 1
        pages = {p["number"]: p for p in doc["pages"]}
        for tp in truth["pages"]:
            page = pages.get(tp["number"], {"fields": []})
            for k, v in score_page(tp, page["fields"]).items():
                totals[k] = totals.get(k, 0) + v
            # Pages scanned turned (`synth --turned`): read turned back? (Upright ones: left as they lay?)
            kind = "turned_pages" if tp.get("turned") else "upright_pages"
            totals[kind] = totals.get(kind, 0) + 1
            if page.get("rotation", 0) == (360 - int(tp.get("turned", 0))) % 360:
                totals[kind + "_read_upright"] = totals.get(kind + "_read_upright", 0) + 1

    return {"documents_failed": failed, **totals, **rates(totals)}


#: The rates scored, each as (numerator, denominator) of the counts `score_page` adds up.
RATES = {
    "digit_accuracy_pct": ("digits_right", "truth_digits"),
    "field_exact_pct": ("fields_exact", "truth_fields"),
    "field_found_pct": ("fields_found", "truth_fields"),
    "blank_accuracy_pct": ("blank_right", "cells"),
    "unflagged_error_pct": ("unflagged_wrong", "unflagged"),
    "flagged_pct": ("flagged", "read"),
}
#: The rates the issue sets targets on, also given with a 95 % interval (`wilson`).
INTERVALS = ("digit_accuracy_pct", "unflagged_error_pct", "flagged_pct")


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion k/n, in percent (95 % for z = 1.96): the range of
    true rates that these pages are consistent with. 200 pages hold about 10,000 digits, so a digit
    accuracy near 99.5 % is known to about ±0.14 point from one set of pages."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return (round(100 * max(0.0, centre - half), 3), round(100 * min(1.0, centre + half), 3))


def rates(totals: dict[str, int]) -> dict[str, Any]:
    """Each of `RATES` in percent from the counts, and the 95 % interval of the targeted ones."""
    out: dict[str, Any] = {}
    for name, (a, b) in RATES.items():
        n = totals.get(b, 0)
        out[name] = round(100.0 * totals.get(a, 0) / n, 3) if n else float("nan")
        if name in INTERVALS:
            out[name.removesuffix("_pct") + "_ci95_pct"] = list(wilson(totals.get(a, 0), n))
    return out


#: Counts that add up over sets of pages (`pool`).
COUNTS = ("pages", "documents", "documents_failed", "wall_s", *PAGE_COUNTS)


def pool(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Several sets' results as one: the counts added up, the rates and intervals computed from the
    sums (not averaged), throughput as all pages over all seconds."""
    totals = {k: sum(r.get(k, 0) for r in results) for k in COUNTS}
    out: dict[str, Any] = {"sets": len(results), **totals, **rates(totals)}
    out["wall_s"] = round(totals["wall_s"], 3)
    out["pages_per_s"] = round(totals["pages"] / totals["wall_s"], 2) if totals["wall_s"] else None
    return out


SWEEP = (0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999)


def threshold_sweep(export: dict[str, Any], truth_dir: Path, thresholds: tuple[float, ...] = SWEEP) -> list[dict]:
    """Flagged share and error among unflagged digits if digits were flagged under each threshold
    (the stored confidences re-read; a digit is flagged exactly when its confidence is under the threshold)."""
    import copy

    rows = []
    for t in thresholds:
        ex = copy.deepcopy(export)
        for doc in ex["documents"]:
            for page in doc["pages"]:
                for f in page["fields"]:
                    for d in f["digits"]:
                        if d["label"] is not None:
                            d["needs_review"] = d["confidence"] < t
        r = score_batch(ex, truth_dir)
        rows.append({"threshold": t, "flagged_pct": r["flagged_pct"], "unflagged_error_pct": r["unflagged_error_pct"]})
    return rows


def load_export(settings: Settings, batch_id: int) -> dict[str, Any]:
    from digitreader.export import export_json

    with session_scope(settings) as s:
        return export_json(s, batch_id)


def generate_pages(
    cache: Path, pages: int, seed: int, data_dir: Path, fmt: str, kind: str, per_file: int = 1, turned: float = 0.0
) -> Path:
    from digitreader.synth import generate

    out = cache / (
        f"synth-{kind}-{fmt}-{pages}-seed{seed}"
        + (f"-per{per_file}" if per_file > 1 else "")
        + (f"-turned{turned:g}" if turned else "")
    )
    done = out / ".complete"
    if not done.exists():
        t = time.perf_counter()
        generate(out, pages=pages, seed=seed, fmt=fmt, kind=kind, data_dir=data_dir, per_file=per_file, turned=turned)
        done.write_text("ok")
        print(f"generated {pages} pages in {time.perf_counter() - t:.1f} s -> {out}", file=sys.stderr)
    return out


def generate_validation_pages(out: Path, pages: int, seed: int, source: Any, on_page: Any = None) -> None:
    """Pages of MNIST *validation* digits into `out`: `source`, a `training.pagecrops.MnistTrainDigits`
    over the validation split, supplies the digits (and records which image each drew). The pages of
    `bench_candidates.py --e2e-seed SEED` and of `bench_gap.py --seeds SEED`, made by this one call so
    that they stay the same pages; `on_page(n)` is called after each page."""
    from digitreader.synth import generate

    generate(out, pages=pages, seed=seed, fmt="png", kind="mixed", digit_source=source, on_page=on_page)


def decode_time(files: list[Path], settings: Settings) -> tuple[float, int]:
    from digitreader.pipeline.load import load_pages

    t = time.perf_counter()
    n = 0
    for f in files:
        for _ in load_pages(f, settings):
            n += 1
    return time.perf_counter() - t, n


def opencv_decode_time(files: list[Path]) -> tuple[float, int]:
    """Seconds to decode the files OpenCV reads (`cv2.imread`, greyscale; PDFs are left out), and
    how many: the decoder an ordinary OpenCV program uses, beside this pipeline's own (`decode_time`)."""
    import cv2

    t = time.perf_counter()
    n = 0
    for f in files:
        if f.suffix.lower() != ".pdf" and cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) is not None:
            n += 1
    return time.perf_counter() - t, n


@dataclass
class BatchRun:
    """One run of the embedded pipeline (`run_batch`): its export, report, settings and timings."""

    export: dict[str, Any]
    report: Any  # digitreader.pipeline.process.BatchReport
    settings: Settings
    load_s: float  # loading the model
    wall_s: float  # process_batch alone
    precision: str = "fp32"  # the reader's file: fp32, or its int8 file (DIGITREADER_PRECISION)


def run_batch(scans: Path, **settings: Any) -> BatchRun:
    """`process_batch` on the pages in `scans` into a fresh SQLite database (deleted afterwards), the
    model loaded first and timed apart; `settings`: Settings fields (workers, model_path, splitter...)."""
    from digitreader.pipeline.process import load_predictor, process_batch

    with tempfile.TemporaryDirectory() as home:
        st = Settings(home=Path(home), _env_file=None, **settings)  # type: ignore[call-arg]
        get_engine(st)
        t = time.perf_counter()
        predictor = load_predictor(st)
        load_s = time.perf_counter() - t
        t = time.perf_counter()
        report = process_batch([scans], st, predictor=predictor)
        wall = time.perf_counter() - t
        precision = str(getattr(predictor.info, "precision", "fp32"))
        return BatchRun(load_export(st, report.batch_id), report, st, load_s, wall, precision)


def run_e2e(scans: Path, *, decode: bool = True, sweep: tuple[float, ...] = SWEEP, **settings: Any) -> dict[str, Any]:
    """The embedded pipeline on the pages in `scans` (files + truth) into a fresh SQLite database:
    throughput and the scores against the truth. `settings`: Settings fields (workers, model_path,
    splitter, ...); `decode`: also time decoding alone (for the per-page ratio); `sweep`: the
    review thresholds to score the flags at."""
    from digitreader.pipeline.process import collect_inputs

    batch = run_batch(scans, **settings)
    st, report, export, load_s, wall = batch.settings, batch.report, batch.export, batch.load_s, batch.wall_s
    cores = st.workers or os.cpu_count() or 1
    result: dict[str, Any] = {
        "machine": f"{cpu.summary()}, Python {platform.python_version()}",
        "c_halves_missing": native.missing(),  # the stages that ran in Python (pipeline/native.py)
        "pages": report.pages,
        "documents": len(report.processed),
        "model_version": report.model_version,
        "precision": batch.precision,
        "threshold": report.threshold,
        "model_load_s": round(load_s, 3),
        "wall_s": round(wall, 3),
        "pages_per_s": round(report.pages / wall, 2) if wall else None,
        "per_page_core_ms": round(1000 * wall * cores / max(report.pages, 1), 2),
    }
    if decode:
        files = collect_inputs([scans])
        dec_s, dec_pages = decode_time(files, st)
        per_page = wall * cores / max(report.pages, 1)
        result["decode_only_ms_per_page"] = round(1000 * dec_s / max(dec_pages, 1), 2)
        result["ratio_per_page_core_to_decode"] = round(per_page / (dec_s / max(dec_pages, 1)), 2)
        # The same ratio against OpenCV's decoder (libpng + zlib for PNG), which is about twice as
        # slow as this pipeline's own on the benchmark's PNG pages: what the ratio is when decoding
        # is done the usual way. OpenCV's time per page is over the pages it reads (not PDF's).
        cv_s, cv_pages = opencv_decode_time(files)
        if cv_pages:
            result["opencv_decode_ms_per_page"] = round(1000 * cv_s / cv_pages, 2)
            result["ratio_per_page_core_to_opencv_decode"] = round(per_page / (cv_s / cv_pages), 2)
    return {**result, **score_batch(export, scans), "threshold_sweep": threshold_sweep(export, scans, sweep)}


#: A finer sweep for the plot.
PLOT_SWEEP = (0.5, 0.7, 0.8, 0.9, 0.93, 0.95, 0.96, 0.97, 0.975, 0.98, 0.985, 0.99, 0.993, 0.995, 0.997, 0.998,
              0.999, 0.9995)  # fmt: skip
#: The thresholds written beside their points (the others would overlap).
PLOT_LABELS = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9995)


def _pyplot() -> Any:
    """matplotlib.pyplot drawing to files only (the Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_sweep(result: dict[str, Any], out: Path, targets: tuple[float, float] = (3.0, 0.2)) -> None:
    """Share flagged against error among unflagged digits, one point per review threshold, with the
    issue's targets (at most 3 % flagged, at most 0.2 % error among unflagged) shaded: where an
    operator picking a threshold can see what each one costs in review work and buys in errors."""
    plt = _pyplot()

    rows = result["threshold_sweep"]
    xs = [r["flagged_pct"] for r in rows]
    ys = [r["unflagged_error_pct"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    ax.add_patch(plt.Rectangle((0, 0), targets[0], targets[1], color="#e8f5e9", zorder=0, label="both targets met"))
    ax.axhline(targets[1], color="#c62828", lw=0.8, ls="--", label=f"target: ≤ {targets[1]} % error among unflagged")
    ax.axvline(targets[0], color="#1565c0", lw=0.8, ls="--", label=f"target: ≤ {targets[0]:g} % flagged")
    ax.plot(xs, ys, "o-", color="#424242", ms=4, lw=1)
    for r, x, y in zip(rows, xs, ys, strict=True):
        chosen = abs(r["threshold"] - result["threshold"]) < 1e-9
        if chosen or r["threshold"] in PLOT_LABELS:
            ax.annotate(f"{r['threshold']:g}", (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7,
                        fontweight="bold" if chosen else "normal")  # fmt: skip
        if chosen:
            ax.plot([x], [y], "o", color="#ef6c00", ms=8, label=f"the model's threshold ({r['threshold']:g})")
    ax.set_xlabel("digits flagged for review (%)")
    ax.set_ylabel("wrong among digits not flagged (%)")
    ax.set_xlim(0, max(xs) * 1.1)
    ax.set_ylim(0, max(max(ys), targets[1]) * 1.15)
    ax.set_title(
        f"Review threshold: {result['pages']} pages, reader {result['model_version']}, "
        f"{result['digit_accuracy_pct']} % of digits right",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


#: The issue's targets for the three rates drawn by `plot_sets`: (rate, label, target, "min" or "max").
SET_TARGETS = (
    ("digit_accuracy", "digits read right (%)", 99.5, "min"),
    ("unflagged_error", "wrong among digits not flagged (%)", 0.2, "max"),
    ("flagged", "digits flagged for review (%)", 3.0, "max"),
)


def plot_sets(sets: list[dict[str, Any]], pooled: dict[str, Any] | None, out: Path) -> None:
    """Each set's digit accuracy, error among unflagged digits and share flagged with its 95 %
    interval, the pooled sets last, against the issue's targets: whether a set that misses a target
    by a few digits is a different pipeline or the same one on other pages."""
    plt = _pyplot()

    rows = [(str(r.get("seed", i + 1)), r) for i, r in enumerate(sets)]
    if pooled is not None:
        rows.append((f"all {pooled['sets']}", pooled))
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6), dpi=110)
    for ax, (key, label, target, side) in zip(axes, SET_TARGETS, strict=True):
        for x, (name, r) in enumerate(rows):
            v = r[f"{key}_pct"]
            lo, hi = r[f"{key}_ci95_pct"]
            met = v >= target if side == "min" else v <= target
            colour = "#2e7d32" if met else "#c62828"
            ax.errorbar([x], [v], yerr=[[v - lo], [hi - v]], fmt="s" if name.startswith("all") else "o",
                        color=colour, ms=5, capsize=3, lw=1)  # fmt: skip
        ax.axhline(target, color="#424242", lw=0.8, ls="--")
        ax.annotate(f"target {'≥' if side == 'min' else '≤'} {target:g} %", (0, target), textcoords="offset points",
                    xytext=(0, 4), fontsize=7)  # fmt: skip
        ax.set_xticks(range(len(rows)), [n for n, _ in rows], fontsize=7, rotation=30)
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    pages = sum(r["pages"] for r in sets)
    fig.suptitle(f"{len(sets)} sets, {pages} pages: each rate with its 95 % interval (Wilson)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=200)
    ap.add_argument(
        "--seed",
        type=int,
        nargs="+",
        default=[2024],
        help="one set of --pages pages per seed; with several, each set's results and all of them pooled",
    )
    ap.add_argument("--format", default="png")
    ap.add_argument("--kind", default="mixed")
    ap.add_argument(
        "--per-file",
        type=int,
        default=1,
        help="pages per file for --format tiff or pdf (e.g. --pages 96 --per-file 96: one long document)",
    )
    ap.add_argument(
        "--turned",
        type=float,
        default=0.0,
        help="share of pages scanned upside down or on a side (synth --turned); scores how many are read upright",
    )
    ap.add_argument("--rotate-pages", choices=["true", "false"], default="true", help="DIGITREADER_ROTATE_PAGES")
    ap.add_argument("--workers", type=int, default=0, help="segmentation processes (0 = cores)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "digitreader-bench")
    ap.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("DIGITREADER_DATA_DIR", ROOT.parent / "shared" / "datasets")),
    )
    ap.add_argument("--json", type=Path, help="write the results here too")
    ap.add_argument(
        "--plot",
        type=Path,
        help="also draw flagged share against error among unflagged digits for a finer threshold sweep "
        "(PNG; needs matplotlib, in the `train` extra)",
    )
    ap.add_argument(
        "--plot-sets",
        type=Path,
        help="also draw each set's (and the pooled) digit accuracy, error among unflagged and share flagged "
        "with their 95 %% intervals against the targets (PNG; needs matplotlib)",
    )
    args = ap.parse_args()

    sets = []
    for seed in args.seed:
        scans = generate_pages(
            args.cache, args.pages, seed, args.data_dir, args.format, args.kind, args.per_file, args.turned
        )
        sweep = PLOT_SWEEP if args.plot else SWEEP
        rotate = args.rotate_pages == "true"
        sets.append({"seed": seed, **run_e2e(scans, workers=args.workers, sweep=sweep, rotate_pages=rotate)})
    pooled = pool(sets) if len(sets) > 1 else None
    result: dict[str, Any] = sets[0] if pooled is None else {"pooled": pooled, "sets": sets}
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if args.plot_sets:
        plot_sets(sets, pooled, args.plot_sets)
        print(f"plot: {args.plot_sets}", file=sys.stderr)
    if args.plot:
        plot_sweep(sets[0], args.plot)
        print(f"plot: {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
