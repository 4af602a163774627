"""Join finished training runs into one model: the mean of their logits, exported as one ONNX file.

    python -m training.ensemble runs/drnet-s1 runs/wide-s1 --out runs/ens --model-version 1.2.0

Members are trained independently (`digitreader train`, different architectures or seeds); the
ensemble is calibrated on the validation split, exported (one graph, one file, with metadata) and
reported exactly like a single run (`training.run.finalize`). Its `checkpoint.pt` holds the joined
weights, so `training.ship` and `digitreader train --with-corrections` treat it like any run.
Which members to join is decided before looking at the MNIST test set (it is never used to choose).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from training.archs import Ensemble
from training.run import TrainConfig, finalize, load_checkpoint_model

log = logging.getLogger(__name__)


def join(runs: list[Path], out: Path, version: str) -> tuple[Ensemble, TrainConfig, list[dict[str, float]]]:
    """Load the members' final weights (the moving average when a run kept one) and write OUT/checkpoint.pt."""
    if len(runs) < 2:
        raise ValueError("an ensemble needs at least two runs")
    loaded = [load_checkpoint_model(r) for r in runs]
    outputs = {next(p for n, p in reversed(list(m.named_parameters())) if n.endswith("weight")).shape[0]
               for m, _, _ in loaded}  # fmt: skip
    if len(outputs) != 1:
        raise ValueError(f"members disagree on the number of outputs: {sorted(outputs)}")
    model = Ensemble([m for m, _, _ in loaded]).eval()
    first = loaded[0][1]
    cfg = dataclasses.replace(first, arch="+".join(c.arch for _, c, _ in loaded), out=str(out), version=version,
                              seed=first.seed, epochs=max(c.epochs or 0 for _, c, _ in loaded))  # fmt: skip
    history = loaded[0][2]  # the report's curves: the first member's (each member keeps its own report)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"config": dataclasses.asdict(cfg), "epoch": len(history) - 1, "model": model.state_dict(),
                "history": history, "members": [str(r) for r in runs]}, out / "checkpoint.pt")  # fmt: skip
    (out / "config.json").write_text(json.dumps({**dataclasses.asdict(cfg), "members": [str(r) for r in runs]},
                                                indent=2) + "\n")  # fmt: skip
    return model, cfg, history


def build_ensemble(runs: list[Path], out: Path, version: str) -> dict[str, Any]:
    """Join, calibrate, export and report; returns the report (report.json)."""
    model, cfg, history = join(runs, out, version)
    return finalize(out, model=model, run=(cfg, history), extra_meta={"members": [r.name for r in runs]})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="finished run folders (each with checkpoint.pt)")
    ap.add_argument("--out", type=Path, required=True, help="output folder for the joined model and its report")
    ap.add_argument("--model-version", default="dev", help="version string written into the model")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    result = build_ensemble(args.runs, args.out, args.model_version)
    keys = ("arch", "mnist_test_accuracy", "threshold", "temperature")
    print(json.dumps({"out": str(args.out), **{k: result[k] for k in keys}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
