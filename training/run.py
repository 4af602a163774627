"""A training run: data -> epochs (checkpointed, resumable, seeded) -> calibration -> ONNX -> report.

Output folder layout (`--out`):
    config.json        the run's settings
    checkpoint.pt      after every epoch: model, optimizer, scheduler, history, RNG states
    history.json       loss/accuracy per epoch (train and validation)
    model.onnx         the exported model (with metadata)
    report.json, report.md, *.png   the evaluation report (training/report.py)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from training import archs
from training.augment import AugmentConfig, augment_batch, shift_zoom_rotate
from training.data import Dataset, load_mnist, train_val_split
from training.fit import evaluate, predict_logits, train_one_epoch
from training.nondigits import generate_nondigits

if TYPE_CHECKING:
    from training.pagecrops import PageCrops

log = logging.getLogger(__name__)

VAL_SIZE = 5000
SPLIT_SEED = 20240601  # fixed: the validation split never changes between runs
NONDIGIT_VAL_SEED = 7_000_001  # held-out non-digits for calibration / threshold
NONDIGIT_TEST_SEED = 9_000_001  # held-out non-digits for the report only
#: Page digit crops are real scans already: only a few of them get the scan augmentation each epoch.
PAGE_AUGMENT = AugmentConfig(p_any=0.15)

ProgressFn = Callable[[str, int, int, dict[str, float]], None]  # (phase, done, total, stats)


@dataclass
class TrainConfig:
    arch: str = archs.DEFAULT_ARCH
    epochs: int | None = None  # None: the architecture's recipe
    batch_size: int | None = None
    optimizer: str | None = None  # adamw | adam | sgd | rmsprop
    lr: float | None = None
    seed: int = 0
    data_dir: str | None = None
    out: str = "runs/default"
    device: str = "auto"  # cpu | cuda | auto
    limit: int | None = None  # train on the first N training samples (smoke tests)
    nondigit_fraction: float = 0.1  # non-digit crops per training digit (0 disables class 10)
    augment: str | None = None  # scan | shift15 | none (None: the recipe's)
    threads: int = 2
    version: str = "dev"
    download: bool = False
    ema: float | None = None  # decay of the exponential moving average of the weights (0: off; None: the recipe's)
    page_crops: int = 0  # generated pages whose segmented crops join every epoch (training/pagecrops.py); 0: off
    page_crops_seed: int = 1
    page_negatives: str = "all"  # synthetic negatives of the page crops used: all | touching | unions | none
    page_crops_cache: str | None = None  # None: $DIGITREADER_HOME/cache/pagecrops

    def resolved(self) -> TrainConfig:
        r = archs.ARCHS[self.arch]
        return dataclasses.replace(
            self,
            epochs=self.epochs or r.epochs,
            batch_size=self.batch_size or r.batch_size,
            optimizer=self.optimizer or r.optimizer,
            lr=self.lr or r.lr,
            augment=self.augment or r.augment,
            ema=r.extra.get("ema", 0.0) if self.ema is None else self.ema,
        )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from digitreader.errors import UsageError

        raise UsageError("--device cuda: no CUDA device is available to PyTorch", hint="use --device cpu or auto")
    return torch.device(name)


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    extra = archs.ARCHS[cfg.arch].extra
    wd = extra.get("weight_decay", 0.0)
    assert cfg.lr is not None
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=wd)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=wd)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=extra.get("momentum", 0.9), weight_decay=wd)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(model.parameters(), lr=cfg.lr, alpha=0.9, eps=1e-7)
    from digitreader.errors import UsageError

    raise UsageError(f"unknown optimizer {cfg.optimizer!r}: choose adamw, adam, sgd or rmsprop")


@dataclass(frozen=True)
class Splits:
    train: Dataset
    val: Dataset
    val_nondigits: np.ndarray
    checksums: dict[str, str]
    page: PageCrops | None = None  # crops segmentation cut from generated pages (cfg.page_crops > 0)


def load_splits(cfg: TrainConfig, progress: ProgressFn | None = None) -> Splits:
    full = load_mnist("train", cfg.data_dir, download=cfg.download)
    tr_idx, val_idx = train_val_split(len(full), VAL_SIZE, SPLIT_SEED)
    if cfg.limit:
        tr_idx = tr_idx[: cfg.limit]
    n_val_nd = 0 if cfg.nondigit_fraction <= 0 else VAL_SIZE // 5
    nd = generate_nondigits(n_val_nd, NONDIGIT_VAL_SEED) if n_val_nd else np.zeros((0, 28, 28), np.uint8)
    page = None
    if cfg.page_crops > 0:
        from training.pagecrops import page_crops

        def on_page(done: int, total: int) -> None:
            if progress:
                progress("pages", done, total, {})

        page = page_crops(cfg.page_crops, cfg.page_crops_seed, cfg.data_dir, cache_dir=cfg.page_crops_cache,
                          on_page=on_page)  # fmt: skip
    return Splits(full.subset(tr_idx), full.subset(val_idx), nd, full.checksums, page)


#: `--page-negatives` -> the kinds of synthetic negatives (`pagecrops.NEGATIVE_KINDS`) it trains on.
PAGE_NEGATIVES = {
    "all": ("union", "half"),  # what 1.2.0 and 1.3.0 were trained with
    "touching": ("union", "half", "touch"),
    "unions": ("union",),
    "none": (),
}


def page_negatives(cfg: TrainConfig, page: PageCrops) -> np.ndarray:
    """The page crops' synthetic negatives this run trains on (`page_negatives`, see PAGE_NEGATIVES)."""
    from training.pagecrops import NEGATIVE_KINDS

    keep = [NEGATIVE_KINDS.index(k) for k in PAGE_NEGATIVES[cfg.page_negatives]]
    return page.negatives[np.isin(page.negative_kinds, keep)]


def epoch_size(cfg: TrainConfig, splits: Splits) -> int:
    """Samples in one epoch of `epoch_data`: digits, generated non-digits, page crops and their negatives."""
    n = len(splits.train)
    page = 0 if splits.page is None else len(splits.page) + len(page_negatives(cfg, splits.page))
    return n + int(n * cfg.nondigit_fraction) + page


def epoch_data(cfg: TrainConfig, splits: Splits, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """This epoch's training set: freshly augmented digits plus fresh non-digits (seeded by epoch)."""
    rng = np.random.default_rng([cfg.seed, epoch])
    images = splits.train.images
    if cfg.augment == "scan":
        images = augment_batch(images, rng)
    elif cfg.augment == "shift15":
        images = shift_zoom_rotate(images, rng)
    labels = splits.train.labels
    assert labels is not None
    n_nd = int(len(images) * cfg.nondigit_fraction)
    if n_nd:
        nd = generate_nondigits(n_nd, int(rng.integers(1 << 31)))
        images = np.concatenate([images, nd])
        labels = np.concatenate([labels, np.full(n_nd, 10, np.int64)])
    if splits.page is not None:
        images, labels = _with_page_crops(cfg, splits.page, images, labels, rng)
    return images, labels


def _with_page_crops(cfg: TrainConfig, page: PageCrops, images: np.ndarray, labels: np.ndarray,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Append the page crops (their labels) and the synthetic negatives (10); a few page digits augmented."""
    crops = page.crops
    if cfg.augment == "scan":
        digits = page.labels < 10
        crops = crops.copy()
        crops[digits] = augment_batch(crops[digits], rng, PAGE_AUGMENT)
    negatives = page_negatives(cfg, page)
    images = np.concatenate([images, crops, negatives])
    labels = np.concatenate([labels, page.labels, np.full(len(negatives), 10, np.int64)])
    return images, labels


def val_set(splits: Splits) -> tuple[np.ndarray, np.ndarray]:
    labels = splits.val.labels
    assert labels is not None
    return (np.concatenate([splits.val.images, splits.val_nondigits]),
            np.concatenate([labels, np.full(len(splits.val_nondigits), 10, np.int64)]))  # fmt: skip


def train(config: TrainConfig, *, resume: bool = False, progress: ProgressFn | None = None,
          finalize_run: bool = True) -> Path:  # fmt: skip
    """Run (or resume) training; then calibrate, export and report. Returns the output folder."""
    cfg = config.resolved()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, cfg.threads))
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    num_classes = 11 if cfg.nondigit_fraction > 0 else 10
    # channels_last: ~1.4x faster convolutions on CPU for these small models.
    # Module.to takes memory_format (documented); torch's stub overloads omit it, hence the ignore.
    model = archs.build(cfg.arch, num_classes).to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = make_optimizer(cfg, model)
    recipe = archs.ARCHS[cfg.arch]
    assert cfg.epochs is not None and cfg.batch_size is not None and cfg.lr is not None
    splits = load_splits(cfg, progress)
    steps = -(-epoch_size(cfg, splits) // cfg.batch_size)
    step_sched: torch.optim.lr_scheduler.LRScheduler | None = None
    plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
    if recipe.schedule == "onecycle":
        step_sched = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps + 1, pct_start=0.25
        )
    elif recipe.schedule == "plateau":
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=3, min_lr=1e-5)
    # Exponential moving average of the weights (and batch-norm statistics): the averaged copy is
    # what is validated, checkpointed as "ema" and exported; it smooths the last epochs' noise.
    ema: torch.optim.swa_utils.AveragedModel | None = None
    if cfg.ema:
        ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema), use_buffers=True
        )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.extra.get("label_smoothing", 0.0))
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, float]] = []
    start_epoch = 0
    ckpt_path = out / "checkpoint.pt"
    if resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        if ckpt["config"]["arch"] != cfg.arch:
            from digitreader.errors import UsageError

            raise UsageError(f"{ckpt_path} was trained with --arch {ckpt['config']['arch']}, not {cfg.arch}")
        model.load_state_dict(ckpt["model"])
        if ema is not None and ckpt.get("ema_state"):
            ema.load_state_dict(ckpt["ema_state"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if step_sched is not None and ckpt.get("step_sched"):
            step_sched.load_state_dict(ckpt["step_sched"])
        if plateau is not None and ckpt.get("plateau"):
            plateau.load_state_dict(ckpt["plateau"])
        gen.set_state(ckpt["generator"])
        torch.set_rng_state(ckpt["torch_rng"])
        history = ckpt["history"]
        start_epoch = ckpt["epoch"] + 1
        log.info("resuming %s at epoch %d/%d", ckpt_path, start_epoch + 1, cfg.epochs)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    val_x, val_y = val_set(splits)

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        if progress:
            progress("augment", 0, 1, {"epoch": epoch + 1})
        x, y = epoch_data(cfg, splits, epoch)
        total = len(x)
        done = 0

        def on_batch(n: int, loss: float, acc: float, epoch: int = epoch, total: int = total) -> None:
            nonlocal done
            done += n
            if progress:
                progress("train", done, total, {"epoch": epoch + 1, "loss": loss, "acc": acc})

        stats = train_one_epoch(model, x, y, optimizer, batch_size=cfg.batch_size, generator=gen, device=device,
                                loss_fn=loss_fn, step_scheduler=step_sched, on_batch=on_batch,
                                after_step=None if ema is None else lambda: ema.update_parameters(model))  # fmt: skip
        final = model if ema is None else ema.module
        val = evaluate(final, val_x, val_y, device=device)
        if plateau is not None:
            plateau.step(val.loss)
        row = {"epoch": epoch + 1, "train_loss": stats.loss, "train_acc": stats.accuracy, "val_loss": val.loss,
               "val_acc": val.accuracy, "lr": optimizer.param_groups[0]["lr"],
               "seconds": time.perf_counter() - t0}  # fmt: skip
        history.append(row)
        log.info("epoch %d/%d %s", epoch + 1, cfg.epochs, {k: round(v, 5) for k, v in row.items()})
        torch.save({"config": dataclasses.asdict(cfg), "epoch": epoch, "model": model.state_dict(),
                    "ema": ema.module.state_dict() if ema else None, "ema_state": ema.state_dict() if ema else None,
                    "optimizer": optimizer.state_dict(),
                    "step_sched": step_sched.state_dict() if step_sched else None,
                    "plateau": plateau.state_dict() if plateau else None,
                    "generator": gen.get_state(), "torch_rng": torch.get_rng_state(), "history": history},
                   out / "checkpoint.tmp")  # fmt: skip
        (out / "checkpoint.tmp").replace(ckpt_path)
        (out / "history.json").write_text(json.dumps(history, indent=1) + "\n")
        if progress:  # after the checkpoint: an interrupt here loses nothing
            progress("epoch", epoch + 1, cfg.epochs, row)
    if finalize_run:
        finalize(out, model=model if ema is None else ema.module, splits=splits, progress=progress)
    return out


def load_checkpoint_model(out: Path) -> tuple[nn.Module, TrainConfig, list[dict[str, float]]]:
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    cfg = TrainConfig(**ckpt["config"])
    n_out = ckpt["model"][[k for k in ckpt["model"] if k.endswith("weight")][-1]].shape[0]
    model = archs.build(cfg.arch, int(n_out))
    model.load_state_dict(ckpt.get("ema") or ckpt["model"])  # the weight average when the run kept one
    return model.eval(), cfg, ckpt["history"]


def finalize(out: Path, *, model: nn.Module | None = None, splits: Splits | None = None,
             progress: ProgressFn | None = None, run: tuple[TrainConfig, list[dict[str, float]]] | None = None,
             extra_meta: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """Calibrate on validation, export ONNX with metadata, verify parity, write the report.

    `run` = (config, history) when the model does not come from OUT/checkpoint.pt (an ensemble)."""
    from training import calibrate, export, report

    if run is None:
        loaded, cfg, history = load_checkpoint_model(out)
        model = model or loaded
    else:
        assert model is not None, "finalize(run=...) needs the model"
        cfg, history = run
    model = model.cpu().to(memory_format=torch.contiguous_format).eval()  # type: ignore[call-overload]  # as in train()
    splits = splits or load_splits(cfg)
    if progress:
        progress("finalize", 0, 1, {})
    val_x, val_y = val_set(splits)
    if isinstance(model, archs.Cascade):  # its gate's and its answer's temperatures, on the same crops
        from training.cascade import fit_temperatures

        fit_temperatures(model, val_x, val_y)
    val_logits = predict_logits(model, val_x, device=torch.device("cpu"))
    if val_logits.shape[1] == 10:  # a 10-class reference model: non-digits cannot be represented
        keep = val_y < 10
        val_x, val_y, val_logits = val_x[keep], val_y[keep], val_logits[keep]
    temperature = calibrate.fit_temperature(val_logits, val_y)
    threshold = calibrate.choose_threshold(calibrate.softmax(val_logits, temperature), val_y, 0.001)
    test = load_mnist("test", cfg.data_dir)
    onnx_path = out / "model.onnx"
    labels = [str(i) for i in range(10)] + (["non-digit"] if val_logits.shape[1] == 11 else [])
    meta: dict[str, Any] = {
        "version": cfg.version,
        "arch": cfg.arch,
        "labels": labels,
        "temperature": f"{temperature:.6f}",
        "threshold": f"{threshold:.6f}",
        "epochs": str(len(history)),
        "seed": str(cfg.seed),
        "training_data": {**splits.checksums, "validation": f"{VAL_SIZE} of train, split seed {SPLIT_SEED}"},
        **(extra_meta or {}),
    }
    if splits.page is not None:
        meta["training_data"]["page_crops"] = (
            f"{cfg.page_crops} generated pages, seed {cfg.page_crops_seed}, pagecrops v{splits.page.params['version']}"
            f": {len(splits.page)} segmented crops + {len(splits.page.negatives)} synthetic negatives"
        )
    export.export_onnx(model, onnx_path, {**meta, "mnist_test_accuracy": "pending"})
    max_diff = export.parity(model, onnx_path, test.images[:512])
    if max_diff > export.PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX parity check failed: max |torch - onnxruntime| = {max_diff:.2e}")
    result = report.write_report(out, onnx_path=onnx_path, cfg=cfg, history=history, val_logits=val_logits,
                                 val_labels=val_y, temperature=temperature, threshold=threshold, test=test,
                                 parity_max_abs_diff=max_diff)  # fmt: skip
    # Re-export with the measured test accuracy in the metadata (same weights, same graph).
    export.export_onnx(model, onnx_path, {**meta, "mnist_test_accuracy": f"{result['mnist_test_accuracy']:.4f}"})
    if progress:
        progress("finalize", 1, 1, {"accuracy": result["mnist_test_accuracy"]})
    return result
