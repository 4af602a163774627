"""Other OCR engines on the same generated pages and ground truth as bench_e2e.py, for comparison.

    apt-get install -y tesseract-ocr                 # for --engine tesseract
    .venv/bin/pip install -e '.[peers]'              # for --engine rapidocr
    .venv/bin/python benchmarks/bench_peers.py --engine tesseract --pages 200 [--limit-pages 40]
    .venv/bin/python benchmarks/bench_peers.py --engine rapidocr --pages 200

Each truth field is cropped from the page (the truth box, with a small margin: the engine is given
the easiest possible job, no field finding) and read as one line of text, one process per core:

- `tesseract`: Debian's Tesseract, `--psm 7` (one text line), digits whitelist, OMP_THREAD_LIMIT=1.
- `rapidocr`: RapidOCR's recognition model alone (PP-OCR, shipped in its wheel; no detection, no
  angle classifier), onnxruntime on one thread; the digits of what it reads are kept.

Scores: field exact match, and digit accuracy (position by position when the lengths agree;
otherwise the digits of the longest common subsequence count as right). Throughput counts only
the engine's time plus decoding.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_e2e import generate_pages  # noqa: E402

from digitreader.pipeline.load import load_pages  # noqa: E402
from digitreader.settings import Settings  # noqa: E402


def lcs(a: str, b: str) -> int:
    dp = [0] * (len(b) + 1)
    for ca in a:
        prev = 0
        for j, cb in enumerate(b):
            cur = dp[j + 1]
            dp[j + 1] = prev + 1 if ca == cb else max(dp[j + 1], dp[j])
            prev = cur
    return dp[-1]


def read_field(crop: np.ndarray, engine: str = "tesseract") -> str:
    """The digits an engine reads in a field's crop (greyscale), in order."""
    if engine == "rapidocr":
        out = _rapidocr()(cv2.cvtColor(crop, cv2.COLOR_GRAY2BGR), use_det=False, use_cls=False, use_rec=True)
        return "".join(ch for t in (out.txts or ()) for ch in t if ch.isdigit())
    ok, png = cv2.imencode(".png", crop)
    assert ok
    proc = subprocess.run(
        ["tesseract", "stdin", "stdout", "--psm", "7", "-c", "tessedit_char_whitelist=0123456789"],
        input=png.tobytes(),
        capture_output=True,
        env={**os.environ, "OMP_THREAD_LIMIT": "1"},
        check=False,
    )
    return "".join(ch for ch in proc.stdout.decode(errors="replace") if ch.isdigit())


_ENGINE: Any = None


def _rapidocr() -> Any:
    """One RapidOCR per process, on one onnxruntime thread (the pool has a process per core)."""
    global _ENGINE
    if _ENGINE is None:
        from rapidocr import RapidOCR

        _ENGINE = RapidOCR(
            params={
                "Global.log_level": "warning",
                "EngineConfig.onnxruntime.intra_op_num_threads": 1,
                "EngineConfig.onnxruntime.inter_op_num_threads": 1,
            }
        )
    return _ENGINE


def score_field(got: str, want: str) -> int:
    """Digits of `want` read right in `got`: position by position when the lengths agree, else the
    longest common subsequence."""
    if len(got) == len(want):
        return sum(1 for a, b in zip(got, want, strict=True) if a == b)
    return lcs(got, want)


def engine_version(engine: str) -> str:
    if engine == "rapidocr":
        from importlib.metadata import version

        return f"RapidOCR {version('rapidocr')} (recognition only)"
    return subprocess.run(["tesseract", "--version"], capture_output=True, text=True).stdout.splitlines()[0]


def missing(engine: str) -> str | None:
    """Why `engine` cannot run here, or None."""
    if engine == "tesseract" and shutil.which("tesseract") is None:
        return "tesseract is not installed (apt-get install -y tesseract-ocr)"
    if engine == "rapidocr":
        try:
            import rapidocr  # noqa: F401
        except ImportError:
            return "rapidocr is not installed (pip install -e '.[peers]')"
    return None


def do_file(path: str, truth: dict[str, Any], engine: str = "tesseract") -> dict[str, int]:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    s = {"pages": 0, "fields": 0, "exact": 0, "digits": 0, "right": 0}
    for page, tp in zip(load_pages(path, settings), truth["pages"], strict=False):
        s["pages"] += 1
        g = page.gray
        for tf in tp["fields"]:
            x, y, w, h = tf["bbox"]
            m = max(4, h // 10)
            crop = g[max(0, y - m) : y + h + m, max(0, x - m) : x + w + m]
            got = read_field(crop, engine)
            want = tf["value"]
            s["fields"] += 1
            s["exact"] += int(got == want)
            s["digits"] += len(want)
            s["right"] += score_field(got, want)
    return s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=("tesseract", "rapidocr"), default="tesseract")
    ap.add_argument("--pages", type=int, default=200, help="the generated set (same as bench_e2e.py)")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--format", default="png")
    ap.add_argument("--kind", default="mixed")
    ap.add_argument("--limit-pages", type=int, default=0, help="only the first N files (the engines are slow)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "digitreader-bench")
    ap.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("DIGITREADER_DATA_DIR", ROOT.parent / "shared" / "datasets")),
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    why = missing(args.engine)
    if why:
        print(why, file=sys.stderr)
        return 8
    scans = generate_pages(args.cache, args.pages, args.seed, args.data_dir, args.format, args.kind)
    truths = sorted(scans.glob("*.truth.json"))
    if args.limit_pages:
        truths = truths[: args.limit_pages]
    jobs = []
    for t in truths:
        truth = json.loads(t.read_text())
        jobs.append((str(scans / truth["file"]), truth, args.engine))
    t0 = time.perf_counter()
    totals: dict[str, int] = {}
    with cf.ProcessPoolExecutor(args.workers) as ex:
        for s in ex.map(do_file, *zip(*jobs, strict=True)):
            for k, v in s.items():
                totals[k] = totals.get(k, 0) + v
    wall = time.perf_counter() - t0
    result = {
        "engine": engine_version(args.engine),
        "workers": args.workers,
        **totals,
        "wall_s": round(wall, 2),
        "pages_per_s": round(totals["pages"] / wall, 3),
        "field_exact_pct": round(100.0 * totals["exact"] / max(totals["fields"], 1), 2),
        "digit_accuracy_pct": round(100.0 * totals["right"] / max(totals["digits"], 1), 2),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
