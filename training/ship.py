"""Ship a run's model as digitreader's default: copy it into digitreader/models/ and write the manifest.

    python -m training.ship runs/drnet            # -> digitreader/models/default.onnx + manifest.json
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
from pathlib import Path

log = logging.getLogger(__name__)

MODELS = Path(__file__).resolve().parents[1] / "digitreader" / "models"
SHIPPED_FILES = ("report.md", "report.json", "confusion.png", "curves.png", "misclassified.png", "reliability.png")


def ship(run: Path, models: Path = MODELS, name: str = "default.onnx") -> dict[str, object]:
    src = run / "model.onnx"
    if not src.exists():
        raise FileNotFoundError(f"{src}: no exported model in this run")
    models.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, models / name)
    for f in SHIPPED_FILES:
        if (run / f).exists():
            shutil.copyfile(run / f, models / f)
    if (run / "checkpoint.pt").exists():  # weights for `train --with-corrections`, tied to this ONNX file
        from training.corrections import save_weights
        from training.run import load_checkpoint_model

        model, cfg, _ = load_checkpoint_model(run)
        onnx_sha = hashlib.sha256((models / name).read_bytes()).hexdigest()
        save_weights(model, cfg.arch, models / name.replace(".onnx", ".pt"), cfg.version, onnx_sha)
    report = json.loads((run / "report.json").read_text())
    manifest = {
        "model": name,
        "sha256": hashlib.sha256((models / name).read_bytes()).hexdigest(),
        "version": report["version"],
        "arch": report["arch"],
        "epochs": report["epochs"],
        "mnist_test_accuracy": report["mnist_test_accuracy"],
        "temperature": report["temperature"],
        "threshold": report["threshold"],
        "nondigits_rejected": report["nondigits"].get("rejected"),
        "throughput_digits_per_s_1_thread": report["throughput_digits_per_s_1_thread"],
    }
    (models / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


if __name__ == "__main__":
    print(json.dumps(ship(Path(sys.argv[1])), indent=1))
