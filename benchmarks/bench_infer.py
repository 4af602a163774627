"""Inference throughput of the inference worker's path, in digits/s, at several batch sizes.

    .venv/bin/python benchmarks/bench_infer.py                          # CPU here; CUDA when present
    .venv/bin/python benchmarks/bench_infer.py --batches 256 1024 4096 16384 --providers cuda

Two numbers per batch size, on real MNIST test digits (the MNIST form the crops have):

- model: `Predictor.predict` alone (uint8 -> float scaling, onnxruntime run, softmax with the
  temperature) over `--digits` crops in batches of B (settings.batch_size = B);
- worker path: what one flush of the inference worker does besides the database: decode the
  task payloads (`workers.codec`, pages of 56 digits), `recognize_pages` over all of them,
  `assemble_document` per document.

It prints the execution provider and, with CUDA, the GPU model (nvidia-smi), so a run on a GPU
machine documents itself. Results go to docs/benchmarks.md "## Distributed".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from digitreader import cpu  # noqa: E402
from digitreader.pipeline.process import DocumentCut, assemble_document, recognize_pages  # noqa: E402
from digitreader.settings import Settings  # noqa: E402
from digitreader.types import DigitSlot, FieldCut, PageCut  # noqa: E402


def mnist_crops(data_dir: Path, n: int) -> np.ndarray:
    from digitreader.synth.mnist import read_idx

    imgs = read_idx(data_dir / "mnist" / "t10k-images-idx3-ubyte.gz")
    reps = -(-n // len(imgs))
    return np.ascontiguousarray(np.tile(imgs, (reps, 1, 1))[:n]).astype(np.uint8)


def fake_documents(crops: np.ndarray, per_page: int = 56, per_field: int = 8) -> list[DocumentCut]:
    """One-page documents holding the crops in fields of `per_field` boxes (like a form page)."""
    docs = []
    for start in range(0, len(crops), per_page):
        chunk = crops[start : start + per_page]
        fields = []
        for f0 in range(0, len(chunk), per_field):
            slots = tuple(DigitSlot(i, (10 + 30 * i, 10 + f0, 28, 28), chunk[f0 + i], False)
                          for i in range(min(per_field, len(chunk) - f0)))  # fmt: skip
            fields.append(FieldCut(f"field_{f0 // per_field}", "boxes", (0, f0, 300, 40), slots))
        page = PageCut(1, 2480, 3508, tuple(fields))
        docs.append(DocumentCut(f"doc{start}.png", (page,), page_count=1))
    return docs


def gpu_name() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)  # fmt: skip
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def best_of(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[256, 1024, 4096, 16384])
    ap.add_argument("--digits", type=int, default=65536, help="crops per measurement (default 65536)")
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs")
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0 = all cores)")
    ap.add_argument("--providers", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--model", default=None, help="ONNX model (default: the shipped one)")
    default_data = os.environ.get("DIGITREADER_DATA_DIR", str(ROOT.parent / "shared" / "datasets"))
    ap.add_argument("--data-dir", default=default_data, help="folder holding mnist/")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)

    from workers.codec import decode_cut, encode_cut

    crops = mnist_crops(Path(args.data_dir), args.digits)
    docs = fake_documents(crops)
    payloads = [encode_cut(d) for d in docs]
    rows = []
    info: dict[str, Any] = {}
    for b in args.batches:
        settings = Settings(_env_file=None, batch_size=b, intra_op_threads=args.threads, providers=args.providers,  # type: ignore[call-arg]
                            model_path=args.model)  # fmt: skip
        from digitreader.pipeline.recognize import Predictor

        pred = Predictor.load(settings.model_path, settings=settings)
        pred.predict(crops[: min(b, 1024)])  # warm-up (CUDA: context, kernels)
        model_s = best_of(lambda pred=pred: pred.predict(crops), args.repeat)

        def worker_path(pred: Any = pred, b: int = b) -> None:
            cuts = [decode_cut(p) for p in payloads]
            probs = recognize_pages(pred, [p for c in cuts for p in c.pages], b)
            for c, pr in zip(cuts, probs, strict=True):
                assemble_document(c, [pr], 0.9)

        path_s = best_of(worker_path, args.repeat)
        rows.append({"batch": b, "digits": len(crops), "model_digits_per_s": len(crops) / model_s,
                     "worker_path_digits_per_s": len(crops) / path_s})  # fmt: skip
        info = {"provider": pred.info.provider, "model": pred.info.version, "threads": args.threads}
        print(f"batch {b:>6}: model {len(crops) / model_s:>12,.0f} digits/s   worker path "
              f"{len(crops) / path_s:>10,.0f} digits/s", file=sys.stderr)  # fmt: skip
    import onnxruntime as ort

    info.update(
        gpu=gpu_name() if "CUDA" in info.get("provider", "") else None,
        cpu=cpu.summary(),
        onnxruntime=ort.__version__,
        payload_bytes_per_page=int(np.mean([len(p) for p in payloads])),
    )
    result = {"info": info, "rows": rows}
    print(json.dumps(result, indent=1))
    print("\n| batch | model only (digits/s) | worker path: decode + recognize + assemble (digits/s) |")
    print("| ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['batch']} | {r['model_digits_per_s']:,.0f} | {r['worker_path_digits_per_s']:,.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
