"""`digitreader train`: train, calibrate, export and report a model (thin adapter over training.run)."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import typer

from digitreader.cli.output import err, print_json, progress, writable_folder
from digitreader.errors import MissingDependencyError, UsageError

log = logging.getLogger(__name__)

ARCH_NAMES = ("drnet", "drnet-wide", "drnet-deep", "seed000", "seed001", "seed002", "seed003", "seed004")


def _require_torch() -> None:
    # find_spec, not an import: the runtime never loads torch just to check for it.
    if importlib.util.find_spec("torch") is None:
        raise MissingDependencyError("torch", "train", "digitreader train")
    if importlib.util.find_spec("onnx") is None:
        raise MissingDependencyError("onnx", "train", "digitreader train")


def train(
    arch: str = typer.Option("drnet", "--arch", help=f"Architecture: {', '.join(ARCH_NAMES)}."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Epochs (default: the architecture's recipe)."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=2, help="Batch size (default: recipe's)."),
    optimizer: str | None = typer.Option(None, "--optimizer", help="adamw, adam, sgd or rmsprop (default: recipe's)."),
    lr: float | None = typer.Option(None, "--lr", min=0.0, help="(Peak) learning rate (default: recipe's)."),
    seed: int = typer.Option(0, "--seed", help="Random seed: same seed, same data order, same model."),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", envvar="DIGITREADER_DATA_DIR", help="Folder holding mnist/ (the four IDX gzip files)."
    ),
    out: Path = typer.Option(Path("runs/default"), "--out", "-o", help="Output folder (checkpoint, model, report)."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
    limit: int | None = typer.Option(None, "--limit", min=100, help="Train on the first N samples (smoke tests)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoint.pt."),
    augment: str | None = typer.Option(None, "--augment", help="scan, shift15 or none (default: recipe's)."),
    nondigits: float = typer.Option(
        0.1, "--nondigits", min=0.0, max=1.0, help="Generated non-digit crops per training digit; 0 = 10 classes only."
    ),
    threads: int = typer.Option(2, "--threads", min=1, help="PyTorch CPU threads."),
    ema: float | None = typer.Option(
        None,
        "--ema",
        min=0.0,
        max=0.99999,
        help="Decay of the moving average of the weights that is exported "
        "(e.g. 0.999; 0 = off; default: the recipe's).",
    ),
    page_crops: int = typer.Option(
        0,
        "--page-crops",
        min=0,
        help="Also train on the crops our segmentation cuts from N generated pages "
        "(MNIST training digits only, never validation or test), labelled against "
        "the pages' truth: digits as themselves; touching pairs cut as one, pieces "
        "of a digit and strays as non-digits; plus unions of neighbouring digits "
        "and halves of digits as non-digits. Made once (~0.3 s CPU a page) and "
        "cached in $DIGITREADER_HOME/cache/pagecrops. 0 = off. E.g. 400.",
    ),
    page_crops_seed: int = typer.Option(1, "--page-crops-seed", help="--page-crops: seed of the generated pages."),
    page_negatives: str = typer.Option(
        "all",
        "--page-negatives",
        help="--page-crops: synthetic negatives to add: all (unions of two "
        "neighbouring digits and halves of wide digits), touching (all, "
        "plus neighbouring digits pushed together until they touch), "
        "unions, or none.",
    ),
    version: str = typer.Option("dev", "--model-version", help="Version string written into the model."),
    download: bool = typer.Option(False, "--download", help="Download MNIST when missing (needs internet)."),
    finalize_only: bool = typer.Option(
        False, "--finalize-only", help="Only calibrate/export/report OUT/checkpoint.pt again."
    ),
    with_corrections: bool = typer.Option(
        False,
        "--with-corrections",
        help="Fine-tune the active model on reviewers' corrections + MNIST "
        "(training/corrections.py); registers a candidate.",
    ),
    corrections_weight: int = typer.Option(
        10, "--corrections-weight", min=0, help="--with-corrections: times each corrected digit is seen per epoch."
    ),
    init_from: Path | None = typer.Option(
        None,
        "--init-from",
        help="--with-corrections: weights .pt or run folder to start from (default: the active model's weights).",
    ),
    promote: bool = typer.Option(False, "--promote", help="--with-corrections: run the promotion gate after."),
) -> None:
    """Train a digit model on MNIST, calibrate it, export it to ONNX and write its report.

    Everything lands in --out: checkpoint.pt (every epoch; --resume continues), model.onnx,
    report.md/report.json and plots. Progress goes to stderr; a JSON summary to stdout.

    Example (the shipped model):  digitreader train --arch drnet --epochs 20 --out runs/drnet20

    Smoke test in a minute:  digitreader train --epochs 1 --limit 3000 --out /tmp/run
    """
    if arch not in ARCH_NAMES:
        raise UsageError(f"unknown --arch {arch!r}; choose one of {', '.join(ARCH_NAMES)}")
    if device not in ("cpu", "cuda", "auto"):
        raise UsageError("--device must be cpu, cuda or auto")
    if page_negatives not in ("all", "touching", "unions", "none"):
        raise UsageError("--page-negatives must be all, touching, unions or none")
    if augment not in (None, "scan", "shift15", "none"):
        raise UsageError("--augment must be scan, shift15 or none")
    _require_torch()
    writable_folder(out)  # before minutes of training, not after
    if with_corrections:
        from training.corrections import retrain_cli

        retrain_cli(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, data_dir=data_dir, out=out,
                    limit=limit, threads=threads, version=None if version == "dev" else version,
                    weight=corrections_weight, init_from=init_from, promote=promote)  # fmt: skip
        return
    from training.run import TrainConfig, finalize
    from training.run import train as run_train

    cfg = TrainConfig(arch=arch, epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, seed=seed,
                      data_dir=str(data_dir) if data_dir else None, out=str(out), device=device, limit=limit,
                      nondigit_fraction=nondigits, augment=augment, threads=threads, version=version,
                      download=download, ema=ema, page_crops=page_crops,
                      page_crops_seed=page_crops_seed, page_negatives=page_negatives)  # fmt: skip
    with progress() as bar:
        task = bar.add_task("loading", total=None)

        def on_progress(phase: str, done: int, total: int, stats: dict[str, Any]) -> None:
            if phase == "train":
                bar.update(task, description=f"epoch {stats['epoch']} loss {stats['loss']:.4f} acc {stats['acc']:.4f}",
                           completed=done, total=total)  # fmt: skip
            elif phase == "pages":
                bar.update(task, description="cutting training crops from generated pages", completed=done,
                           total=total)  # fmt: skip
            elif phase == "augment":
                bar.update(task, description=f"epoch {stats['epoch']}: augmenting", completed=0, total=None)
            elif phase == "epoch":
                err.print(
                    f"epoch {done}/{total}: train loss {stats['train_loss']:.4f} acc {stats['train_acc']:.4f}"
                    f" | val loss {stats['val_loss']:.4f} acc {stats['val_acc']:.4f} | {stats['seconds']:.0f} s"
                )
            elif phase == "finalize" and done == 0:
                bar.update(task, description="calibrating, exporting, reporting", completed=0, total=None)

        if finalize_only:
            if not (out / "checkpoint.pt").exists():
                raise UsageError(f"--finalize-only: no checkpoint in {out}")
            finalize(out, progress=on_progress)
        else:
            run_train(cfg, resume=resume, progress=on_progress)
    import json

    report = json.loads((out / "report.json").read_text())
    print_json({"out": str(out), "model": str(out / "model.onnx"), "arch": report["arch"],
                "epochs": report["epochs"], "mnist_test_accuracy": report["mnist_test_accuracy"],
                "threshold": report["threshold"], "temperature": report["temperature"],
                "nondigits_rejected": report["nondigits"].get("rejected")})  # fmt: skip


def register(app: typer.Typer) -> None:
    app.command("train")(train)
