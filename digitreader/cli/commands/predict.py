"""`digitreader predict`: read single-digit images (or a Kaggle test CSV) with the active model."""

from __future__ import annotations

import contextlib
import csv
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from digitreader.cli.output import err, output_file, print_json, warning_line
from digitreader.errors import DigitreaderError, ExitCode, InputError, UsageError
from digitreader.settings import get_settings

if TYPE_CHECKING:  # imported where used, so that `digitreader --help` does not load them
    import numpy as np

    from digitreader.pipeline.recognize import Predictor, Recognition

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm"}
CSV_FIELDS = ["path", "label", "confidence", "top1", "p1", "top2", "p2", "top3", "p3", "needs_review"]


def iter_images(paths: list[Path]) -> Iterator[Path]:
    """Files as given; folders expanded (recursively, sorted) to their image files."""
    for p in paths:
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            yield p


def read_digit(path: Path) -> np.ndarray:
    """An image file -> 28x28 MNIST-form crop; InputError for missing or unreadable files."""
    import cv2
    import numpy as np

    from digitreader.pipeline import decoder_messages
    from digitreader.pipeline.normalize import normalize_digit

    if not path.exists():
        raise InputError("no such file", path=path, code="unreadable")
    if path.stat().st_size == 0:
        raise InputError("empty file", path=path, code="empty_file")
    # Read the bytes here and decode them: cv2.imread crashes the process (OpenCV 5.1) on a file name
    # that is not valid UTF-8, and Python opens any name.
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read it ({exc.strerror or exc})", path=path, code="unreadable") from exc
    with decoder_messages.caught() as heard:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise InputError("not a readable image (PNG, JPEG, BMP, TIFF, WebP, PNM)", path=path, code="unreadable")
    if heard:  # read, but what the decoder said is worth a look (as `submit` says of a page)
        err.print(
            f"digitreader: warning: {warning_line(str(path), heard)}", markup=False, highlight=False, soft_wrap=True
        )
    return normalize_digit(img)


def _row(path: str, rec: Recognition, i: int) -> dict[str, Any]:
    from digitreader.types import NON_DIGIT

    label = int(rec.labels[i])
    top = [[None if c == NON_DIGIT else c, round(p, 6)] for c, p in rec.top(3)[i]]
    return {"path": path, "label": None if label == NON_DIGIT else label,
            "confidence": round(float(rec.confidence[i]), 6), "top": top,
            "needs_review": bool(rec.needs_review[i])}  # fmt: skip


def predict(
    inputs: list[Path] = typer.Argument(None, help="Image files or folders of single-digit images."),
    fmt: str = typer.Option("jsonl", "--format", "-f", help="jsonl (one JSON object per line) or csv."),
    kaggle_csv: Path | None = typer.Option(None, "--kaggle-csv", help="Kaggle digit-recognizer test.csv to read."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write results here instead of stdout."),
    model: Path | None = typer.Option(None, "--model", help="ONNX model (default: DIGITREADER_MODEL_PATH or shipped)."),
    batch: int = typer.Option(256, "--batch", min=1, help="Images decoded per inference batch."),
) -> None:
    """Read single-digit images of any size, grey or colour, dark-on-light or light-on-dark.

    Each image is normalized the MNIST way (ink box -> 20x20 -> centred by mass in 28x28) and read;
    one JSON object per line on stdout:
    {"path", "label" (null = not a digit), "confidence", "top" (the three likeliest digits, each as
    \\[digit, probability]), "needs_review"}.
    Unreadable files are reported on stderr and the others go on (exit 3 if some failed, 4 if all).

    Examples:
      digitreader predict my_digits/ --format csv
      digitreader predict --kaggle-csv test.csv -o submission.csv   (Kaggle ImageId,Label)
    """
    if fmt not in ("jsonl", "csv"):
        raise UsageError("--format must be jsonl or csv")
    if not inputs and kaggle_csv is None:
        raise UsageError("give image files/folders, or --kaggle-csv test.csv", hint="see digitreader predict --help")
    import numpy as np

    from digitreader.pipeline.recognize import Predictor

    predictor = Predictor.load(model, get_settings())
    if kaggle_csv is not None:
        _kaggle(predictor, kaggle_csv, output)
        return
    ok = failed = 0
    # A file is written whole or not at all, and a place that cannot be written is a usage error (exit 2).
    with output_file(output) if output else contextlib.nullcontext(sys.stdout) as out:
        writer = csv.writer(out) if fmt == "csv" else None
        if writer:
            writer.writerow(CSV_FIELDS)
        files = list(iter_images(inputs))
        for start in range(0, len(files), batch):
            crops, names = [], []
            for f in files[start : start + batch]:
                try:
                    crops.append(read_digit(f))
                    names.append(str(f))
                except DigitreaderError as exc:
                    failed += 1
                    err.print(f"digitreader: {exc}", markup=False, highlight=False)
            if not crops:
                continue
            rec = predictor.predict(np.stack(crops))
            for i, name in enumerate(names):
                row = _row(name, rec, i)
                if writer:
                    t = row["top"]
                    writer.writerow([name, "" if row["label"] is None else row["label"], row["confidence"],
                                     *[v for pair in t for v in ("x" if pair[0] is None else pair[0], pair[1])],
                                     int(row["needs_review"])])  # fmt: skip
                elif output:
                    import json

                    out.write(json.dumps(row) + "\n")
                else:
                    print_json(row)
            ok += len(names)
        if ok + failed == 0:  # inside: a file named is left as it was
            raise InputError("no image files found in the given paths", code="empty_file")
        out.flush()
    if failed:
        err.print(f"{failed} of {ok + failed} files could not be read")
        raise typer.Exit(int(ExitCode.INPUT if ok == 0 else ExitCode.PARTIAL))


def _kaggle(predictor: Predictor, path: Path, output: Path | None) -> None:
    from training.data import load_kaggle_csv  # numpy/OpenCV only: no torch

    ds = load_kaggle_csv(path)
    logits = predictor.logits(ds.images)
    labels = logits[:, :10].argmax(axis=1)  # a Kaggle submission needs a digit for every row
    with output_file(output) if output else contextlib.nullcontext(sys.stdout) as out:
        w = csv.writer(out)
        w.writerow(["ImageId", "Label"])
        w.writerows([i + 1, int(lab)] for i, lab in enumerate(labels))
        out.flush()
    err.print(f"{len(labels)} rows written{' to ' + str(output) if output else ''}")


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
