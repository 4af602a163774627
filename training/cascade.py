"""Join a reader and a second opinion into one model (`archs.Cascade`), exported as one ONNX file.

    python -m training.cascade runs/pc40-ens-x43 --second runs/deep-s4 runs/deep-s3 \\
        --gate 0.99 --out runs/cascade --model-version 1.4.0

The first model (a finished run folder, or a weights file such as 1.3.0's `default.pt`; not a
cascade, so not the shipped 1.4.0's) reads every crop; the crops it reads with a calibrated
confidence under `--gate` are read again by the second (one run, or several joined as an ensemble),
and for those the mean of all the members' logits is the answer. The two temperatures the gate and
the answer use are fitted on the validation split, then the cascade is calibrated, exported and
reported like any run (`training.run.finalize`). Its `checkpoint.pt` holds all the weights and the
fitted temperatures, so `training.ship` and `digitreader train --with-corrections` treat it like any
run. The gate and the members are chosen before looking at the MNIST test set.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.archs import Cascade, Ensemble
from training.run import TrainConfig, finalize, load_checkpoint_model

log = logging.getLogger(__name__)


def fit_temperatures(model: Cascade, images: np.ndarray, labels: np.ndarray, batch_size: int = 1024) -> None:
    """Fit the cascade's two temperatures (the first model's, for the gate; all the members', for the
    answer) on labelled crops (uint8 (N, 28, 28)), in place."""
    from training import calibrate
    from training.fit import to_tensor

    model.eval()
    firsts, alls = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            z1, za = model.raw_logits(to_tensor(images[i : i + batch_size]))
            firsts.append(z1.numpy())
            alls.append(za.numpy())
    z_first, z_all = np.concatenate(firsts), np.concatenate(alls)
    if z_first.shape[1] == 10:  # a 10-class model cannot be calibrated on the non-digits
        keep = labels < 10
        z_first, z_all, labels = z_first[keep], z_all[keep], labels[keep]
    model.t_first.fill_(calibrate.fit_temperature(z_first, labels))
    model.t_all.fill_(calibrate.fit_temperature(z_all, labels))
    sent = float((calibrate.softmax(z_first, float(model.t_first)).max(1) < float(model.gate)).mean())
    log.info("cascade temperatures: first %.4f, all %.4f; gate %.4g sends %.2f %% of these crops to the second",
             float(model.t_first), float(model.t_all), float(model.gate), 100 * sent)  # fmt: skip


def join(
    first: Path, second: list[Path], out: Path, version: str, gate: float
) -> tuple[Cascade, TrainConfig, list[dict[str, float]]]:
    """Load the two parts into one cascade (its temperatures are fitted by `finalize`); its config
    (the architecture joined with ">") and the report's curves."""
    from training.corrections import load_weights

    if not 0.0 < gate <= 1.0:
        raise ValueError(f"the gate is a confidence in (0, 1], not {gate}")
    head, head_arch = load_weights(first)
    loaded = [load_checkpoint_model(r) for r in second]
    tail: nn.Module = loaded[0][0] if len(loaded) == 1 else Ensemble([m for m, _, _ in loaded])
    tail_arch = "+".join(c.arch for _, c, _ in loaded)
    if ">" in head_arch or ">" in tail_arch:
        raise ValueError("a cascade's parts must be single models or ensembles, not cascades")
    model = Cascade(head, tail, gate).eval()
    x = torch.zeros(2, 1, 28, 28)
    with torch.no_grad():
        if head(x).shape != tail(x).shape:
            raise ValueError("the first and the second model disagree on the number of outputs")
    base = loaded[0][1]
    cfg = dataclasses.replace(base, arch=f"{head_arch}>{tail_arch}", out=str(out), version=version,
                              epochs=max(c.epochs or 0 for _, c, _ in loaded))  # fmt: skip
    history = loaded[0][2]  # the report's curves: the first second-opinion run's (each run keeps its own report)
    return model, cfg, history


def build_cascade(first: Path, second: list[Path], out: Path, version: str, gate: float) -> dict[str, Any]:
    """Join, fit the temperatures, calibrate, export and report; write OUT/checkpoint.pt (with the
    fitted temperatures) and config.json; returns the report (report.json)."""
    model, cfg, history = join(first, second, out, version, gate)
    out.mkdir(parents=True, exist_ok=True)
    result = finalize(out, model=model, run=(cfg, history),
                      extra_meta={"cascade": {"first": first.name, "second": [r.name for r in second],
                                              "gate": gate}})  # fmt: skip
    members = {"first": str(first), "second": [str(r) for r in second], "gate": gate}
    torch.save({"config": dataclasses.asdict(cfg), "epoch": len(history) - 1, "model": model.state_dict(),
                "history": history, "members": members}, out / "checkpoint.pt")  # fmt: skip
    (out / "config.json").write_text(json.dumps({**dataclasses.asdict(cfg), "members": members}, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("first", type=Path, help="the reader: a weights file (.pt) or a finished run folder")
    ap.add_argument(
        "--second",
        nargs="+",
        type=Path,
        required=True,
        help="finished run folders read as the second opinion (several: their ensemble)",
    )
    ap.add_argument(
        "--gate",
        type=float,
        default=0.99,
        help="crops the first reads with a calibrated confidence under this get the second opinion",
    )
    ap.add_argument("--out", type=Path, required=True, help="output folder for the joined model and its report")
    ap.add_argument("--model-version", default="dev", help="version string written into the model")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    result = build_cascade(args.first, args.second, args.out, args.model_version, args.gate)
    keys = ("arch", "mnist_test_accuracy", "threshold", "temperature")
    print(json.dumps({"out": str(args.out), **{k: result[k] for k in keys}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
