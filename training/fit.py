"""One training epoch and one evaluation pass (plain PyTorch loops, no framework)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, 28, 28) uint8 ink-high -> (N, 1, 28, 28) float32 in [0, 1]: the model's input spec."""
    return torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0).unsqueeze(1)


@dataclass(frozen=True)
class EpochStats:
    loss: float
    accuracy: float


def train_one_epoch(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    optimizer: torch.optim.Optimizer,
    *,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device,
    loss_fn: nn.Module,
    step_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    on_batch: Callable[[int, float, float], None] | None = None,
    after_step: Callable[[], None] | None = None,
) -> EpochStats:
    """One pass over (images, labels) in a shuffled order drawn from `generator`.

    `after_step` runs after every optimizer step (the weight average of `--ema` updates there)."""
    model.train()
    n = len(images)
    order = torch.randperm(n, generator=generator).numpy()
    x_all = to_tensor(images)
    y_all = torch.from_numpy(labels.astype(np.int64))
    total_loss, correct, seen = 0.0, 0, 0
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        if len(idx) < 2:  # batch norm needs two samples
            continue
        x = x_all[idx].to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        y = y_all[idx].to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        logits = model(x)
        loss = loss_fn(logits, y)
        loss.backward()
        optimizer.step()
        if step_scheduler is not None:
            step_scheduler.step()
        if after_step is not None:
            after_step()
        total_loss += loss.item() * len(idx)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(idx)
        if on_batch is not None:
            on_batch(len(idx), total_loss / seen, correct / seen)
    return EpochStats(total_loss / max(seen, 1), correct / max(seen, 1))


@torch.no_grad()
def predict_logits(model: nn.Module, images: np.ndarray, *, device: torch.device, batch_size: int = 1024) -> np.ndarray:
    """Logits (N, C) float32 of the model in eval mode."""
    model.eval()
    out = [model(to_tensor(images[i : i + batch_size]).to(device)).float().cpu().numpy()
           for i in range(0, len(images), batch_size)]  # fmt: skip
    return np.concatenate(out) if out else np.zeros((0, 11), np.float32)


def evaluate(model: nn.Module, images: np.ndarray, labels: np.ndarray, *, device: torch.device) -> EpochStats:
    """Cross-entropy and accuracy on a labelled set."""
    logits = predict_logits(model, images, device=device)
    loss = float(nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels.astype(np.int64))))
    return EpochStats(loss, float((logits.argmax(1) == labels).mean()))
