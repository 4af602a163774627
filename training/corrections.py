"""Retraining on reviewers' corrections (`digitreader train --with-corrections`).

1. Read every corrected digit from the database (any SQLAlchemy URL: the settings'), labelled by its
   latest correction (`x` = class 10, not a digit). Split off the **frozen** share by crop hash
   (`digitreader.registry.is_frozen`): those are never trained on; they join MNIST test as the
   frozen evaluation set the promotion gate uses.
2. Fine-tune the base model (the active model's weights kept in the registry, or `--init-from`)
   on a mix per epoch: a fresh random sample of MNIST train (scan-augmented), every trainable
   corrected digit `weight` times (augmented too, so repeats are not identical) and generated
   non-digits. Seeded: the same database, base and seed give the same model.
3. Calibrate, export and report exactly like a normal run (`training.run.finalize`), evaluate on
   the frozen set, and register the model as a *candidate* (with its weights, for the next round).
   `promote=True` then runs the gate (`digitreader.registry.promote`).

Also here: `HardStyleDigits`, a generator of digits in a style MNIST models misread (heavy slant,
very thick or broken strokes, crossed sevens, European ones) for demonstrating the loop.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from digitreader.errors import UsageError
from digitreader.settings import Settings
from training import archs
from training.augment import augment_batch
from training.data import load_mnist, train_val_split
from training.fit import evaluate
from training.nondigits import generate_nondigits
from training.run import SPLIT_SEED, VAL_SIZE, TrainConfig, finalize, seed_everything

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int, dict[str, float]], None]


# ------------------------------------------------------------------------------ hard style


_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_TRIPLEX,
          cv2.FONT_HERSHEY_SCRIPT_SIMPLEX, cv2.FONT_HERSHEY_SCRIPT_COMPLEX)  # fmt: skip


class HardStyleDigits:
    """Digit source for `digitreader.synth.generate(digit_source=...)`: generated (not MNIST) digits
    in a hard style. Stroke fonts drawn very thick, slanted hard to the right, sevens crossed, ones
    with a long flag and a foot, and some strokes broken. Returns ink-high uint8 images."""

    def __init__(self, slant: tuple[float, float] = (0.45, 0.8), thickness: tuple[int, int] = (9, 14),
                 broken: float = 0.5) -> None:  # fmt: skip
        self.slant = slant
        self.thickness = thickness
        self.broken = broken

    def __call__(self, label: int, rng: np.random.Generator) -> np.ndarray:
        size = 96
        img: np.ndarray = np.zeros((size, size), np.uint8)
        font = _FONTS[int(rng.integers(len(_FONTS)))]
        t = int(rng.integers(self.thickness[0], self.thickness[1] + 1))
        scale = 2.2
        (w, h), _ = cv2.getTextSize(str(label), font, scale, t)
        org = ((size - w) // 2, (size + h) // 2)
        cv2.putText(img, str(label), org, font, scale, 255, t, cv2.LINE_AA)
        ys, xs = np.nonzero(img)
        top, bottom, left, right = ys.min(), ys.max(), xs.min(), xs.max()
        if label == 7:  # the continental crossed seven
            y = int(top + (bottom - top) * rng.uniform(0.45, 0.6))
            cx = (left + right) // 2
            half = int((right - left) * rng.uniform(0.35, 0.5))
            cv2.line(img, (cx - half, y), (cx + half, y), 255, max(3, t - 2), cv2.LINE_AA)
        elif label == 1:  # long flag and a foot
            tip = (left - int(0.5 * (bottom - top)), top + (bottom - top) // 2)
            cv2.line(img, (left + (right - left) // 2, top), tip, 255, max(3, t - 2), cv2.LINE_AA)
            if rng.random() < 0.6:
                cv2.line(img, (left - 10, bottom), (right + 10, bottom), 255, max(3, t - 2), cv2.LINE_AA)
        # Heavy slant to the right: shear about the centre.
        s = float(rng.uniform(*self.slant))
        m = np.array([[1.0, s, -s * size / 2], [0.0, 1.0, 0.0]], np.float32)
        img = np.asarray(cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=0), np.uint8)
        if rng.random() < self.broken:  # broken strokes: one or two gaps cut across the digit
            for _ in range(int(rng.integers(1, 3))):
                y = int(rng.integers(size // 4, 3 * size // 4))
                gap = int(rng.integers(4, 8))
                angle = rng.uniform(-0.4, 0.4)
                y2 = int(y + angle * size)
                pts = np.array([[0, y], [size, y2], [size, y2 + gap], [0, y + gap]])
                cv2.fillPoly(img, [pts.astype(np.int32)], 0)
        return img


def hard_style_crops(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 28, 28) MNIST-form crops of hard-style digits and their labels (normalized like the pipeline)."""
    from digitreader.pipeline.normalize import normalize_digit

    rng = np.random.default_rng(seed)
    src = HardStyleDigits()
    labels = rng.integers(0, 10, n)
    crops = np.stack([normalize_digit(src(int(k), rng)) for k in labels])
    return crops, labels.astype(np.int64)


# ------------------------------------------------------------------------------ retraining


@dataclass
class RetrainConfig:
    out: str = "runs/retrain"
    init_from: str | None = None  # weights .pt / run folder; default: the active model's weights in the registry
    epochs: int = 2
    lr: float = 1e-3
    batch_size: int = 128
    weight: int = 10  # times each trainable corrected digit is seen per epoch
    mnist_per_epoch: int = 15_000  # MNIST training digits sampled per epoch (0 = none, None = all)
    distill: float = 1.0  # weight of the base model's soft labels on MNIST/non-digit samples (keeps MNIST)
    nondigit_fraction: float = 0.1
    seed: int = 0
    threads: int = 2
    version: str | None = None  # default: <parent>-ft<UTC time>
    data_dir: str | None = None
    promote: bool = False
    force: bool = False
    report: bool = True  # full evaluation report (plots, tables) like a normal run; False: calibrate+export only


def load_weights(path: Path) -> tuple[nn.Module, str]:
    """A model from a weights file ({"arch", "model"}), a training checkpoint, or a run folder."""
    p = path / "checkpoint.pt" if path.is_dir() else path
    if not p.is_file():
        raise UsageError(f"--init-from {path}: no weights file or run checkpoint there")
    ckpt = torch.load(p, map_location="cpu", weights_only=False)
    state = ckpt.get("ema") or ckpt["model"]  # a run's weight average when it kept one (as it exported)
    arch = ckpt.get("arch") or (ckpt.get("config") or {}).get("arch")
    assert arch is not None, f"{p}: no architecture in the checkpoint"
    if not archs.is_known(arch):
        raise UsageError(f"{p}: unknown architecture {arch!r}")
    n_out = state[[k for k in state if k.endswith("weight")][-1]].shape[0]
    model = archs.build(arch, int(n_out))
    model.load_state_dict(state)
    return model, arch


def save_weights(model: nn.Module, arch: str, path: Path, version: str, onnx_sha256: str | None = None) -> Path:
    """The small weights file kept beside a registered model, so it can be fine-tuned later.
    `onnx_sha256` ties it to its exported model (a stale weights file is refused)."""
    torch.save({"arch": arch, "version": version, "onnx_sha256": onnx_sha256, "model": model.state_dict()}, path)
    return path


def base_weights(settings: Settings, init_from: str | None) -> tuple[Path, str | None]:
    """(weights path, parent version): --init-from, else the active model's weights in the registry."""
    from digitreader.db import session_scope
    from digitreader.registry import active_model, weights_for

    with session_scope(settings) as s:
        mv = active_model(s)
        parent = mv.version if mv is not None else None
        if init_from:
            return Path(init_from), parent
        w = weights_for(mv)  # <model>.pt beside its ONNX file (e.g. digitreader/models/default.pt)
        sha = mv.sha256 if mv is not None else None
    if w is not None:
        tied = torch.load(w, map_location="cpu", weights_only=False).get("onnx_sha256")
        if tied is not None and tied != sha:
            log.warning("%s belongs to another model (ONNX %s, active %s): not using it", w, tied[:12], str(sha)[:12])
            w = None
    if w is None:
        raise UsageError("no weights to fine-tune from: the active model has no .pt beside it",
                         hint="pass --init-from RUN_FOLDER or WEIGHTS.pt")  # fmt: skip
    return w, parent


def mix_epoch(cfg: RetrainConfig, mnist_x: np.ndarray, mnist_y: np.ndarray, corr_x: np.ndarray,
              corr_y: np.ndarray, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """One epoch's training set: MNIST sample + corrected digits x weight + non-digits, augmented.
    Also returns the mask of samples that are not corrections (distilled from the base model)."""
    rng = np.random.default_rng([cfg.seed, 7, epoch])
    parts_x: list[np.ndarray] = []
    parts_y: list[np.ndarray] = []
    n_m = len(mnist_x) if cfg.mnist_per_epoch is None else min(cfg.mnist_per_epoch, len(mnist_x))
    if n_m:
        idx = rng.choice(len(mnist_x), n_m, replace=False)
        parts_x.append(augment_batch(mnist_x[idx], rng))
        parts_y.append(mnist_y[idx])
    if len(corr_x) and cfg.weight > 0:
        rep_x = np.repeat(corr_x, cfg.weight, axis=0)
        rep_y = np.repeat(corr_y, cfg.weight, axis=0)
        # The first copy as reviewed, the others augmented: repeats are not identical.
        aug = augment_batch(rep_x, rng)
        first = np.arange(0, len(rep_x), cfg.weight)
        aug[first] = rep_x[first]
        parts_x.append(aug)
        parts_y.append(rep_y)
    n = sum(len(p) for p in parts_y)
    n_nd = int(n * cfg.nondigit_fraction)
    if n_nd:
        parts_x.append(np.asarray(generate_nondigits(n_nd, int(rng.integers(1 << 31)))))
        parts_y.append(np.full(n_nd, 10, np.int64))
    if not parts_x:
        raise UsageError("nothing to train on: no MNIST sample and no corrected digits")
    n_corr = len(corr_x) * cfg.weight if len(corr_x) and cfg.weight > 0 else 0
    mask = np.ones(sum(len(p) for p in parts_y), bool)
    mask[n_m : n_m + n_corr] = False
    return np.concatenate(parts_x).astype(np.uint8), np.concatenate(parts_y).astype(np.int64), mask


def export_light(
    out: Path, model: nn.Module, tcfg: TrainConfig, val_x: np.ndarray, val_y: np.ndarray
) -> dict[str, Any]:
    """Calibrate (temperature, threshold) on the MNIST validation split + held-out non-digits and export
    ONNX with the same metadata as `training.run.finalize`, with its parity check, but no report."""
    from training import calibrate, export
    from training.fit import predict_logits
    from training.run import NONDIGIT_VAL_SEED

    model = model.cpu().eval()
    nd = generate_nondigits(VAL_SIZE // 5, NONDIGIT_VAL_SEED)
    x = np.concatenate([val_x, nd])
    y = np.concatenate([val_y, np.full(len(nd), 10, np.int64)])
    if isinstance(model, archs.Cascade):  # fine-tuning moved its members: fit its gate's temperatures again
        from training.cascade import fit_temperatures

        fit_temperatures(model, x, y)
    logits = predict_logits(model, x, device=torch.device("cpu"))
    if logits.shape[1] == 10:
        keep = y < 10
        x, y, logits = x[keep], y[keep], logits[keep]
    temperature = calibrate.fit_temperature(logits, y)
    threshold = calibrate.choose_threshold(calibrate.softmax(logits, temperature), y, 0.001)
    labels = [str(i) for i in range(10)] + (["non-digit"] if logits.shape[1] == 11 else [])
    meta = {"version": tcfg.version, "arch": tcfg.arch, "labels": labels, "temperature": f"{temperature:.6f}",
            "threshold": f"{threshold:.6f}", "epochs": str(tcfg.epochs), "seed": str(tcfg.seed),
            "training_data": {"mnist": "train (sampled)", "corrections": "digitreader database",
                              "validation": f"{VAL_SIZE} of train, split seed {SPLIT_SEED}"}}  # fmt: skip
    path = export.export_onnx(model, out / "model.onnx", meta)
    diff = export.parity(model, path, val_x[:256])
    if diff > export.PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX parity check failed: max |torch - onnxruntime| = {diff:.2e}")
    return {"temperature": temperature, "threshold": threshold, "parity_max_abs_diff": diff}


def train_epoch_distilled(
    model: nn.Module,
    teacher: nn.Module | None,
    x: np.ndarray,
    y: np.ndarray,
    keep: np.ndarray,
    optimizer: torch.optim.Optimizer,
    *,
    batch_size: int,
    generator: torch.Generator,
    loss_fn: nn.Module,
    alpha: float,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    on_batch: Callable[[int, float, float], None] | None = None,
    temperature: float = 2.0,
) -> tuple[float, float]:
    """One epoch: cross-entropy on every sample + `alpha` x KL to the base model's soft labels on the
    samples marked `keep` (MNIST and non-digits), so the fine-tune learns the corrections without
    forgetting what the base model knew ("learning without forgetting")."""
    from training.fit import to_tensor

    model.train()
    order = torch.randperm(len(x), generator=generator).numpy()
    xs, ys, ks = to_tensor(x), torch.from_numpy(y), torch.from_numpy(keep)
    total, correct, seen = 0.0, 0, 0
    for start in range(0, len(x), batch_size):
        idx = order[start : start + batch_size]
        if len(idx) < 2:
            continue
        xb = xs[idx].contiguous(memory_format=torch.channels_last)
        yb, kb = ys[idx], ks[idx]
        optimizer.zero_grad(set_to_none=True)
        logits = model(xb)
        loss = loss_fn(logits, yb)
        if teacher is not None and alpha > 0 and bool(kb.any()):
            with torch.no_grad():
                # a cascade teaches with what it trains on: all its members' mean logits, not the gated answer
                taught = teacher.raw_logits(xb[kb])[1] if isinstance(teacher, archs.Cascade) else teacher(xb[kb])
                soft = torch.softmax(taught / temperature, 1)
            kd = nn.functional.kl_div(torch.log_softmax(logits[kb] / temperature, 1), soft, reduction="batchmean")
            loss = loss + alpha * temperature**2 * kd
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += float(loss.item()) * len(idx)
        correct += int((logits.argmax(1) == yb).sum())
        seen += len(idx)
        if on_batch is not None:
            on_batch(len(idx), total / seen, correct / seen)
    return total / max(seen, 1), correct / max(seen, 1)


def retrain(cfg: RetrainConfig, settings: Settings, *, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Fine-tune on corrections + MNIST, export, evaluate on the frozen set, register (and maybe promote)."""
    from digitreader.db import session_scope
    from digitreader.registry import corrected_digits, evaluate_model, promote, register_model

    t0 = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, cfg.threads))
    seed_everything(cfg.seed)
    data_dir = cfg.data_dir or (str(settings.data_dir) if settings.data_dir else None)
    with session_scope(settings) as s:
        corrected = corrected_digits(s)
    train_x, train_y = corrected.part(frozen=False)
    frozen_n = int(corrected.frozen.sum())
    log.info("corrections: %d digits, %d to train on, %d frozen for evaluation", len(corrected), len(train_y), frozen_n)
    if len(train_y) == 0:
        raise UsageError("no corrected digits to train on yet", hint="review flagged digits first: digitreader review")
    weights, parent = base_weights(settings, cfg.init_from)
    model, arch = load_weights(weights)
    if model(torch.zeros(2, 1, 28, 28)).shape[1] != 11 and (train_y == 10).any():
        keep = train_y != 10  # a 10-class model cannot learn "not a digit"
        train_x, train_y = train_x[keep], train_y[keep]
    full = load_mnist("train", data_dir)
    tr_idx, val_idx = train_val_split(len(full), VAL_SIZE, SPLIT_SEED)
    assert full.labels is not None
    mnist_x, mnist_y = full.images[tr_idx], full.labels[tr_idx]
    val_x, val_y = full.images[val_idx], full.labels[val_idx]
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, float]] = []
    device = torch.device("cpu")
    model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    teacher = None
    if cfg.distill > 0:
        import copy

        teacher = copy.deepcopy(model).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    version = cfg.version or f"{parent or arch}-ft{time.strftime('%Y%m%d%H%M%S', time.gmtime())}"
    for epoch in range(cfg.epochs):
        te = time.perf_counter()
        x, y, keep = mix_epoch(cfg, mnist_x, mnist_y, train_x, train_y, epoch)
        steps = -(-len(x) // cfg.batch_size)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps))
        done = 0

        def on_batch(n: int, loss: float, acc: float, epoch: int = epoch, total: int = len(x)) -> None:
            nonlocal done
            done += n
            if progress:
                progress("train", done, total, {"epoch": epoch + 1, "loss": loss, "acc": acc})

        loss, acc = train_epoch_distilled(model, teacher, x, y, keep, optimizer, batch_size=cfg.batch_size,
                                          generator=gen, loss_fn=loss_fn, alpha=cfg.distill, scheduler=sched,
                                          on_batch=on_batch)  # fmt: skip
        val = evaluate(model, val_x, val_y, device=device)
        row = {"epoch": epoch + 1, "train_loss": loss, "train_acc": acc, "val_loss": val.loss,
               "val_acc": val.accuracy, "lr": cfg.lr, "seconds": time.perf_counter() - te}  # fmt: skip
        history.append(row)
        if progress:
            progress("epoch", epoch + 1, cfg.epochs, row)
    # A checkpoint in training.run's format, so finalize() calibrates/exports/reports it like any run.
    tcfg = TrainConfig(arch=arch, epochs=cfg.epochs, batch_size=cfg.batch_size, optimizer="adamw", lr=cfg.lr,
                       seed=cfg.seed, data_dir=data_dir, out=str(out), device="cpu",
                       nondigit_fraction=cfg.nondigit_fraction, augment="scan", threads=cfg.threads,
                       version=version)  # fmt: skip
    model = model.to(memory_format=torch.contiguous_format).eval()
    torch.save({"config": dataclasses.asdict(tcfg), "epoch": cfg.epochs - 1, "model": model.state_dict(),
                "history": history, "retrain": {**dataclasses.asdict(cfg), "parent": parent,
                                                "corrected_trained": int(len(train_y)), "frozen": frozen_n}},
               out / "checkpoint.pt")  # fmt: skip
    (out / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    if cfg.report:
        report = finalize(out, model=model, progress=progress)
    else:
        report = export_light(out, model, tcfg, val_x, val_y)
    from digitreader.registry import file_sha256

    weights_path = save_weights(model, arch, out / "weights.pt", version, file_sha256(out / "model.onnx"))
    # Its int8 file, which CPUs read with (DIGITREADER_PRECISION=auto), registered with it; kept only
    # if it reads like the model (the evaluation and the promotion gate measure the model in fp32).
    from training.quantize import quantize_checked

    int8 = quantize_checked(out / "model.onnx", data_dir)
    metrics = evaluate_model(out / "model.onnx", settings, corrected)
    with session_scope(settings) as s:
        mv = register_model(s, settings, out / "model.onnx", parent=parent, metrics=metrics, weights=weights_path)
        registered = mv.version
    result: dict[str, Any] = {
        "version": registered, "parent": parent, "out": str(out), "model": str(out / "model.onnx"),
        "corrected_total": len(corrected), "corrected_trained": int(len(train_y)), "frozen_corrected": frozen_n,
        "metrics": metrics, "mnist_test_accuracy_report": report.get("mnist_test_accuracy"), "int8": int8,
        "seconds": round(time.perf_counter() - t0, 1), "promotion": None,
    }  # fmt: skip
    if cfg.promote:
        result["promotion"] = promote(settings, registered, force=cfg.force)
    (out / "retrain.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    return result


def retrain_cli(*, epochs: int | None, lr: float | None, batch_size: int | None, seed: int, data_dir: Path | None,
                out: Path, limit: int | None, threads: int, version: str | None, weight: int,
                init_from: Path | None, promote: bool) -> None:  # fmt: skip
    """`digitreader train --with-corrections`: progress on stderr, the result as JSON on stdout.
    Exit code 3 when --promote was asked and the gate refused the candidate."""
    import typer

    from digitreader.cli.output import err, print_json, progress
    from digitreader.settings import get_settings

    settings = get_settings()
    if data_dir is not None:
        settings = settings.model_copy(update={"data_dir": data_dir})
    default = RetrainConfig()
    cfg = RetrainConfig(out=str(out if str(out) != "runs/default" else Path("runs/retrain")),
                        init_from=str(init_from) if init_from else None, epochs=epochs or default.epochs,
                        lr=lr or default.lr, batch_size=batch_size or default.batch_size, weight=weight,
                        mnist_per_epoch=limit or default.mnist_per_epoch, seed=seed, threads=threads,
                        version=version, data_dir=str(data_dir) if data_dir else None, promote=promote)  # fmt: skip
    with progress() as bar:
        task = bar.add_task("loading corrections", total=None)

        def on_progress(phase: str, done: int, total: int, stats: dict[str, Any]) -> None:
            if phase == "train":
                bar.update(task, description=f"epoch {stats['epoch']} loss {stats['loss']:.4f}", completed=done,
                           total=total)  # fmt: skip
            elif phase == "epoch":
                err.print(f"epoch {done}/{total}: train acc {stats['train_acc']:.4f} | MNIST val acc "
                          f"{stats['val_acc']:.4f} | {stats['seconds']:.0f} s")  # fmt: skip
            elif phase == "finalize" and done == 0:
                bar.update(task, description="calibrating, exporting, reporting", completed=0, total=None)

        result = retrain(cfg, settings, progress=on_progress)
    print_json(result)
    m = result["metrics"]
    corr = "-" if m["corrected_accuracy"] is None else f"{100 * m['corrected_accuracy']:.2f} %"
    err.print(
        f"candidate {result['version']}: MNIST test {100 * m['mnist_test_accuracy']:.2f} %, frozen corrected "
        f"digits {corr} (n={m['corrected_n']}); trained on {result['corrected_trained']} corrected digits"
    )
    if result["promotion"] is not None:
        for r in result["promotion"]["reasons"]:
            err.print(f"  {r}")
        err.print("promoted" if result["promotion"]["promoted"] else "NOT promoted: the gate refused it")
        if not result["promotion"]["promoted"]:
            raise typer.Exit(3)
    else:
        err.print(f"promote it with: digitreader models promote {result['version']}")
