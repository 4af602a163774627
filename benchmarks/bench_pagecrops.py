"""Page crops (training/pagecrops.py): time to cut them, their counts, and how the shipped model reads them.

    DIGITREADER_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/bench_pagecrops.py --pages 400 --seed 1

Fills the default cache ($DIGITREADER_HOME/cache/pagecrops) the way `digitreader train --page-crops`
does, on one thread (cv2.setNumThreads(1), onnxruntime 1 thread), timed as CPU time of this process
(time.process_time) and wall time; a second run reads the cache and reports the stored time. Then
the model (default: the shipped one) reads every crop: accuracy on the digit crops, rejection rate
(label 10) on each kind of non-digit. Prints JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

# The digitreader of this checkout (a worktree of another commit too), not the installed one.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from digitreader.pipeline.recognize import MODELS_DIR, Predictor  # noqa: E402
from training.pagecrops import DIGIT, KINDS, NEGATIVE_KINDS, page_crops  # noqa: E402


def _share(hits: np.ndarray, digits: int = 4) -> float | None:
    return round(float(np.mean(hits)), digits) if hits.size else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=400)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cache-dir", type=Path, default=None, help="default: $DIGITREADER_HOME/cache/pagecrops")
    ap.add_argument("--model", type=Path, default=MODELS_DIR / "default.onnx")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    w0 = time.perf_counter()

    def progress(done: int, total: int) -> None:
        if done % 50 == 0 or done == total:
            print(f"{done}/{total} pages, {time.perf_counter() - w0:.0f} s", file=sys.stderr)

    pc = page_crops(args.pages, args.seed, cache_dir=args.cache_dir, on_page=progress)
    wall = time.perf_counter() - w0
    read = Predictor.load(args.model).predict(pc.crops).labels
    read_neg = Predictor.load(args.model).predict(pc.negatives).labels
    digits = pc.kinds == DIGIT
    per_kind: dict[str, dict[str, float | int | None]] = {
        "digit": {"n": int(digits.sum()), "accuracy": _share(read[digits] == pc.labels[digits], 5)}
    }
    for k, name in enumerate(KINDS):
        if k != DIGIT:
            per_kind[name] = {"n": int((pc.kinds == k).sum()), "rejected": _share(read[pc.kinds == k] == 10)}
    for k, name in enumerate(NEGATIVE_KINDS):
        m = pc.negative_kinds == k
        per_kind[f"negative_{name}"] = {"n": int(m.sum()), "rejected": _share(read_neg[m] == 10)}
    wrong = digits & (read != pc.labels)
    print(json.dumps({
        "pages": args.pages, "seed": args.seed, "from_cache": pc.from_cache, "counts": pc.counts,
        "cpu_seconds_to_cut": round(pc.seconds, 1), "wall_seconds_this_run": round(wall, 1),
        "model": str(args.model), "per_kind": per_kind,
        "digit_confusions": sorted(
            {f"{t}->{r}": int(np.sum((pc.labels[wrong] == t) & (read[wrong] == r)))
             for t, r in zip(pc.labels[wrong].tolist(), read[wrong].tolist(), strict=True)}.items(),
            key=lambda kv: -kv[1])[:12],
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
