"""Ship a run's model as digitreader's default: copy it into digitreader/models/ and write the manifest.

    python -m training.ship runs/drnet            # -> digitreader/models/default.onnx, its int8 file, manifest.json
    python -m training.ship runs/drnet --review-threshold 0.97 --threshold-rule "chosen on validation pages"
    python -m training.ship runs/wide --splitter   # -> digitreader/models/splitter/ (the string splitter's model)

`--review-threshold` replaces the review threshold written into the model (the one its run chose on
MNIST validation digits: error on accepted <= 0.1 %) by one chosen on data closer to the service's,
e.g. the end-to-end benchmark on pages made of validation digits (`benchmarks/bench_candidates.py`,
`benchmarks/bench_e2e.py --seed 777`); the model's metadata keeps both and says which rule chose it.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from digitreader.hashing import sha256_file

log = logging.getLogger(__name__)

MODELS = Path(__file__).resolve().parents[1] / "digitreader" / "models"
SHIPPED_FILES = ("report.md", "report.json", "confusion.png", "curves.png", "misclassified.png", "reliability.png")


def rewrite_metadata(src: Path, dst: Path, update: Callable[[dict[str, str]], None]) -> None:
    """Write `src` to `dst` (one file) with its ONNX metadata changed in place by `update` (same
    graph, same weights)."""
    import onnx

    from training.export import set_metadata

    proto = onnx.load(str(src))
    meta = {p.key: p.value for p in proto.metadata_props}
    update(meta)
    set_metadata(proto, meta)
    onnx.save_model(proto, str(dst), save_as_external_data=False)


def set_review_threshold(path: Path, threshold: float, rule: str) -> None:
    """Rewrite the model's review threshold in its ONNX metadata."""

    def update(meta: dict[str, str]) -> None:
        if "threshold_model_validation" not in meta:
            meta["threshold_model_validation"] = meta.get("threshold", "")
        meta["threshold"] = f"{threshold:.6f}"
        meta["threshold_rule"] = rule

    rewrite_metadata(path, path, update)


def ship(run: Path, models: Path = MODELS, name: str = "default.onnx", review_threshold: float | None = None,
         threshold_rule: str = "", int8: bool = True,
         data_dir: Path | str | None = None) -> dict[str, object]:  # fmt: skip
    src = run / "model.onnx"
    if not src.exists():
        raise FileNotFoundError(f"{src}: no exported model in this run")
    models.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, models / name)
    if review_threshold is not None:
        set_review_threshold(models / name, review_threshold, threshold_rule or "set when shipped")
    onnx_sha = sha256_file(models / name)
    for f in SHIPPED_FILES:
        if (run / f).exists():
            shutil.copyfile(run / f, models / f)
    if (run / "checkpoint.pt").exists():  # weights for `train --with-corrections`, tied to this ONNX file
        from training.corrections import save_weights
        from training.run import load_checkpoint_model

        model, cfg, _ = load_checkpoint_model(run)
        save_weights(model, cfg.arch, models / name.replace(".onnx", ".pt"), cfg.version, onnx_sha)
    report = json.loads((run / "report.json").read_text())
    manifest = {
        "model": name,
        "sha256": onnx_sha,
        "version": report["version"],
        "arch": report["arch"],
        "epochs": report["epochs"],
        "mnist_test_accuracy": report["mnist_test_accuracy"],
        "temperature": report["temperature"],
        "threshold": review_threshold if review_threshold is not None else report["threshold"],
        "threshold_model_validation": report["threshold"],
        "threshold_rule": threshold_rule if review_threshold is not None else report.get("threshold_rule"),
        "nondigits_rejected": report["nondigits"].get("rejected"),
        "throughput_digits_per_s_1_thread": report["throughput_digits_per_s_1_thread"],
    }
    (models / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    if int8:  # the int8 file CPUs read with (DIGITREADER_PRECISION=auto), listed in the manifest
        from training.quantize import quantize_shipped

        manifest["int8"] = quantize_shipped(models / name, data_dir)
    return manifest


SPLITTER_FILES = ("report.md", "report.json")


def ship_splitter(
    run: Path,
    models: Path = MODELS,
    version: str = "splitter-1.0.0",
    rule: str = "",
    int8: bool = True,
    data_dir: Path | str | None = None,
) -> dict[str, object]:
    """Ship a run's model as the string splitter's (`digitreader/models/splitter/`): the model whose
    second opinion decides how string fields split into digits (`digitreader.pipeline.split`), not the
    one that reads them. Its metadata `version` is replaced (`version`) and says its role."""
    src = run / "model.onnx"
    if not src.exists():
        raise FileNotFoundError(f"{src}: no exported model in this run")
    out = models / "splitter"
    out.mkdir(parents=True, exist_ok=True)

    def update(meta: dict[str, str]) -> None:
        meta.update(version=version, role="splitter", trained_as=meta.get("version", ""), chosen_by=rule)

    rewrite_metadata(src, out / "model.onnx", update)
    for f in SPLITTER_FILES:
        if (run / f).exists():
            shutil.copyfile(run / f, out / f)
    report = json.loads((run / "report.json").read_text())
    manifest = {
        "model": "model.onnx",
        "sha256": sha256_file(out / "model.onnx"),
        "version": version,
        "role": "splitter",
        "arch": report["arch"],
        "epochs": report["epochs"],
        "temperature": report["temperature"],
        "nondigits_rejected": report["nondigits"].get("rejected"),
        "chosen_by": rule,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    if int8:
        from training.quantize import quantize_shipped

        manifest["int8"] = quantize_shipped(out / "model.onnx", data_dir)
    return manifest


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a finished run folder (model.onnx, report.json)")
    ap.add_argument("--review-threshold", type=float, default=None, help="review threshold to write into the model")
    ap.add_argument("--threshold-rule", default="", help="how --review-threshold was chosen (kept in the model)")
    ap.add_argument(
        "--splitter",
        action="store_true",
        help="ship it as the string splitter's model (digitreader/models/splitter/), not the reader",
    )
    ap.add_argument("--splitter-version", default="splitter-1.0.0", help="--splitter: version written into it")
    ap.add_argument("--chosen-by", default="", help="--splitter: how it was chosen (kept in the model)")
    ap.add_argument("--no-int8", action="store_true", help="do not write the model's int8 file (training.quantize)")
    ap.add_argument("--data-dir", default=None, help="MNIST data directory for the int8 calibration")
    args = ap.parse_args(argv)
    if args.splitter:
        print(json.dumps(ship_splitter(args.run, version=args.splitter_version, rule=args.chosen_by,
                                       int8=not args.no_int8, data_dir=args.data_dir), indent=1))  # fmt: skip
        return 0
    if args.review_threshold is not None and not 0.0 < args.review_threshold < 1.0:
        ap.error("--review-threshold must lie between 0 and 1")
    print(json.dumps(ship(args.run, review_threshold=args.review_threshold, threshold_rule=args.threshold_rule,
                          int8=not args.no_int8, data_dir=args.data_dir), indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
