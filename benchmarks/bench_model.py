"""Throughput of the shipped digit model with onnxruntime on CPU (digits/s), raw session and Predictor.

    .venv/bin/python benchmarks/bench_model.py [--model PATH] [--seconds 3]

Prints a Markdown table (batch x threads) for docs/benchmarks.md. Uses real MNIST test digits when
DIGITREADER_DATA_DIR is set, random crops otherwise (the speed does not depend on the pixels).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

# The digitreader of this checkout (a worktree of another commit too), not the installed one.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from digitreader.pipeline.recognize import Predictor  # noqa: E402
from digitreader.settings import Settings  # noqa: E402

log = logging.getLogger(__name__)


def crops(n: int) -> np.ndarray:
    data = os.environ.get("DIGITREADER_DATA_DIR")
    if data and (Path(data) / "mnist").exists():
        from training.data import load_mnist

        imgs = load_mnist("test", data).images
        return np.resize(imgs, (n, 28, 28))
    return np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8)


def rate(fn, n: int, seconds: float) -> float:
    for _ in range(3):
        fn()
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        done += n
    return done / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; onnxruntime CPU")
    print("| threads | batch | session digits/s | Predictor.predict digits/s |")
    print("| ---: | ---: | ---: | ---: |")
    for threads in (1, 2):
        for batch in (1, 64, 256, 1024):
            p = Predictor.load(args.model, Settings(_env_file=None, intra_op_threads=threads, batch_size=batch,  # type: ignore[call-arg]
                                                    providers="cpu"))  # fmt: skip
            x = crops(batch)
            xf = (x.astype(np.float32) / 255)[:, None]
            raw = rate(lambda p=p, xf=xf: p.session.run(None, {"input": xf}), batch, args.seconds)
            full = rate(lambda p=p, x=x: p.predict(x), batch, args.seconds)
            print(f"| {threads} | {batch} | {raw:,.0f} | {full:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
