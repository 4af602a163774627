"""ONNX export: one file, opset pinned, dynamic batch axis, self-describing metadata; parity check."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

log = logging.getLogger(__name__)

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
INPUT_SPEC = "float32 (N,1,28,28) = uint8 MNIST-form pixel / 255, ink high"
PARITY_TOLERANCE = 1e-4


def export_onnx(model: nn.Module, path: Path, metadata: dict[str, Any]) -> Path:
    """Write `model` (eval mode, on CPU) to `path` as a single ONNX file with `metadata` in metadata_props."""
    model = model.cpu().eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(2, 1, 28, 28),),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,  # TorchScript exporter: deterministic, one small file, opset as asked
        )
    proto = onnx.load(str(path))
    set_metadata(proto, {"input_spec": INPUT_SPEC, "opset": str(OPSET), **metadata})
    proto.producer_name = "digitreader-training"
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(path), save_as_external_data=False)
    return path


def set_metadata(proto: Any, meta: dict[str, Any]) -> None:
    """Replace an ONNX model's metadata_props by `meta` (non-string values as JSON)."""
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value)


def onnx_logits(path: Path, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    x = images.astype(np.float32)[:, None] / 255.0
    return np.concatenate([sess.run([OUTPUT_NAME], {INPUT_NAME: x[i : i + batch_size]})[0]
                           for i in range(0, len(x), batch_size)])  # fmt: skip


def parity(model: nn.Module, path: Path, images: np.ndarray) -> float:
    """Max abs difference between PyTorch and onnxruntime logits on `images` (uint8 (N,28,28))."""
    from training.fit import predict_logits

    ref = predict_logits(model.cpu(), images, device=torch.device("cpu"))
    got = onnx_logits(path, images)
    return float(np.abs(ref - got).max())


def _speed_batch(batch: int, images: np.ndarray | None) -> np.ndarray:
    """The batch a speed is measured on: `batch` real digits (uint8 (N, 28, 28)) when given, which a
    cascade (`archs.Cascade`) needs (on noise its reader is unsure of every crop), else noise."""
    if images is not None and len(images):
        return (np.resize(images, (batch, 28, 28)).astype(np.float32) / 255.0)[:, None]
    return np.random.default_rng(0).random((batch, 1, 28, 28), dtype=np.float32)


def throughput(path: Path, batch: int, seconds: float = 2.0, threads: int = 1,
               images: np.ndarray | None = None) -> float:  # fmt: skip
    """Digits per second of the ONNX model with onnxruntime on CPU (`threads` intra-op threads), on
    `images` (real digits) when given.

    The best of several short windows within `seconds`: on a machine shared with other jobs the
    best window is the closest to the model's own speed (the mean mostly measures the neighbours).
    """
    import time

    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    x = _speed_batch(batch, images)
    for _ in range(5):
        sess.run(None, {INPUT_NAME: x})
    best, start = 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 8:
            sess.run(None, {INPUT_NAME: x})
            n += batch
        best = max(best, n / (time.perf_counter() - t0))
    return best


def throughput_cpu(path: Path, batch: int, seconds: float = 2.0, images: np.ndarray | None = None) -> float:
    """Digits per CPU-second of this process with one onnxruntime thread: the one-core speed, which
    other jobs on a shared machine do not change (they change the wall time, not the CPU time)."""
    import time

    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    x = _speed_batch(batch, images)
    for _ in range(5):
        sess.run(None, {INPUT_NAME: x})
    n, c0, t0 = 0, time.process_time(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sess.run(None, {INPUT_NAME: x})
        n += batch
    return n / max(time.process_time() - c0, 1e-9)
