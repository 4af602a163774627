"""`digitreader evaluate`: the active model on the MNIST test set, with onnxruntime (no torch)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import typer

from digitreader.cli.output import err, print_json
from digitreader.settings import get_settings

log = logging.getLogger(__name__)


def evaluate(
    data_dir: Path | None = typer.Option(
        None, "--data-dir", envvar="DIGITREADER_DATA_DIR", help="Folder holding mnist/ (the four IDX gzip files)."
    ),
    model: Path | None = typer.Option(None, "--model", help="ONNX model (default: DIGITREADER_MODEL_PATH or shipped)."),
    nondigits: int = typer.Option(2000, "--nondigits", min=0, help="Generated non-digit crops to test rejection on."),
) -> None:
    """Evaluate the active model on the 10,000 MNIST test digits; print JSON on stdout.

    Reports accuracy, the share auto-accepted at the review threshold and the error among them,
    the rejection rate of generated non-digit crops, and digits/s with the current settings
    (DIGITREADER_INTRA_OP_THREADS, DIGITREADER_BATCH_SIZE, DIGITREADER_PRECISION: on a CPU the
    model's int8 file by default; DIGITREADER_PRECISION=fp32 evaluates the model's own file).

    Example:  DIGITREADER_DATA_DIR=../shared/datasets digitreader evaluate
    """
    import numpy as np

    from digitreader.pipeline.recognize import Predictor
    from training.data import load_mnist  # numpy/OpenCV only: no torch

    settings = get_settings()
    test = load_mnist("test", data_dir)
    assert test.labels is not None
    predictor = Predictor.load(model, settings)
    predictor.predict(test.images[:64])  # warm-up
    t0 = time.perf_counter()
    rec = predictor.predict(test.images)
    seconds = time.perf_counter() - t0
    correct = rec.labels == test.labels
    accepted = rec.confidence >= rec.threshold
    result: dict[str, Any] = {
        "model": predictor.info.as_dict(),
        "n": len(rec),
        "accuracy": float(correct.mean()),
        "errors": int((~correct).sum()),
        "threshold": rec.threshold,
        "coverage_at_threshold": float(accepted.mean()),
        "error_on_accepted": float((~correct[accepted]).mean()) if accepted.any() else 0.0,
        "digits_per_s": len(rec) / seconds,
        "threads": settings.intra_op_threads,
        "batch_size": settings.batch_size,
    }
    if nondigits:
        from training.nondigits import generate_nondigits

        nd = generate_nondigits(nondigits, seed=12_345_678)
        assert isinstance(nd, np.ndarray)
        result["nondigits_rejected"] = float((predictor.predict(nd).labels == 10).mean())
    info = predictor.info
    err.print(f"model {info.version} ({info.precision}): "
              f"accuracy {100 * result['accuracy']:.2f} %, {100 * result['coverage_at_threshold']:.2f} % accepted at "
              f"threshold {rec.threshold:.4f} with {100 * result['error_on_accepted']:.3f} % error, "
              f"{result['digits_per_s']:,.0f} digits/s")  # fmt: skip
    print_json(result)


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
