"""Quantize an exported digit model to int8 for CPU inference (onnxruntime static quantization).

    python -m training.quantize digitreader/models/default.onnx            # -> default.int8.onnx beside it
    python -m training.quantize digitreader/models/default.onnx --manifest # ... and list it in manifest.json
    python -m training.quantize runs/drnet/model.onnx --out /tmp/m.int8.onnx --calibration 2048

The int8 file is the same model version in another precision, not a new model: same graph, weights
rounded to 7 bits and activations to 8 (per-channel weights, QDQ format), ranges calibrated (min/max) on
the first `--calibration` digits of the fixed MNIST *validation* split (`training.data`), never the
test set. Its ONNX metadata is the fp32 model's plus `precision=int8` and `quantized_from` (the fp32
file's SHA-256), which the runtime checks (`digitreader/pipeline/recognize.py`).

Why 7-bit weights (onnxruntime's `reduce_range`): on an x86 CPU without VNNI instructions (AVX2
only), onnxruntime multiplies uint8 activations by int8 weights with an instruction that adds
pairs of products into 16 bits and saturates; with full 8-bit weights the sums overflow, and the
shipped reader's first int8 file read 32 of the 10,000 MNIST test digits differently from its fp32
model on such a CPU (99.44 % right against 99.63 %), against 2 on a CPU with VNNI. With 7-bit
weights no pair can overflow, so the file reads the same on both kinds of CPU (4 labels of 10,000
changed; docs/benchmarks.md, session 13).

On a CPU it reads more crops per second than the fp32 file (1.7x with VNNI; less without); labels
and confidences move a little (`tests/test_quantize.py` bounds how much).
The fp32 file stays the reference: PyTorch/onnxruntime parity is tested on it, retraining starts from
its weights, and CUDA runs it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from digitreader.hashing import sha256_file
from digitreader.pipeline.recognize import int8_path

__all__ = [
    "CALIBRATION", "MAX_ACCURACY_DROP", "agreement", "calibration_images", "int8_path", "labels", "main",
    "quantize_checked",
    "quantize_model", "quantize_shipped",
]  # fmt: skip

log = logging.getLogger(__name__)

#: Calibration digits: the first N of the MNIST validation split (fixed seed, see training.data).
CALIBRATION = 2048
CALIBRATION_BATCH = 256


def calibration_images(data_dir: Path | str | None = None, count: int = CALIBRATION) -> np.ndarray:
    """(count, 28, 28) uint8: the first `count` digits of the fixed MNIST validation split."""
    from training.data import load_mnist, train_val_split
    from training.run import SPLIT_SEED, VAL_SIZE

    full = load_mnist("train", data_dir)
    _, val_idx = train_val_split(len(full), VAL_SIZE, SPLIT_SEED)
    return full.images[val_idx[:count]]


def quantize_model(src: Path, dst: Path, images: np.ndarray, reduce_range: bool = True) -> Path:
    """Write `dst`: `src` (fp32 ONNX, input (N,1,28,28) pixel/255) quantized to int8, calibrated on
    `images` ((N, 28, 28) uint8). Metadata is copied, with precision and quantized_from added."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from training.export import set_metadata

    src, dst = Path(src), Path(dst)
    x = (np.asarray(images, np.float32) / 255.0)[:, None]
    input_name = onnx.load(str(src), load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it: Iterator[dict[str, np.ndarray]] = (
                {input_name: x[i : i + CALIBRATION_BATCH]} for i in range(0, len(x), CALIBRATION_BATCH)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        out = Path(tmp) / "int8.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            reduce_range=reduce_range,
        )
        meta = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
        meta["precision"] = "int8"
        meta["quantized_from"] = sha256_file(src)
        # Read by the runtime: an int8 file with 8-bit weights is not used on a CPU that would saturate
        # (`digitreader.cpu.saturating_int8_cpu`).
        meta["weight_bits"] = "7" if reduce_range else "8"
        meta["quantization"] = (
            f"onnxruntime static, QDQ, per-channel int8 weights{' in 7 bits (reduce_range)' if reduce_range else ''}, "
            f"uint8 activations, min/max on {len(x)} MNIST validation digits"
        )
        proto = onnx.load(str(out))
        set_metadata(proto, meta)
        dst.parent.mkdir(parents=True, exist_ok=True)
        onnx.save_model(proto, str(dst), save_as_external_data=False)
    log.info("wrote %s (int8 of %s)", dst, src.name)
    return dst


#: An int8 file is kept for a retrained model only when its MNIST test accuracy is at most this much
#: below its model's: the promotion gate's tolerance (`digitreader.registry.gate`). The shipped
#: model's int8 file (7-bit weights): 0.01 point above, 4 labels of 10,000 changed.
MAX_ACCURACY_DROP = 0.0005


def labels(model: Path, images: np.ndarray) -> np.ndarray:
    """(N,) the labels an ONNX model (either precision) gives `images` ((N, 28, 28) uint8), CPU."""
    from training.export import onnx_logits

    return np.asarray(onnx_logits(model, images).argmax(axis=1))


def agreement(model: Path, int8: Path, images: np.ndarray) -> float:
    """Share of `images` ((N, 28, 28) uint8) that the int8 file labels as its fp32 model does."""
    return float((labels(model, images) == labels(int8, images)).mean())


def quantize_checked(model: Path, data_dir: Path | str | None = None) -> dict[str, object]:
    """Quantize a freshly trained model (`train --with-corrections`) and keep its int8 file only if it
    reads MNIST test about as well as the model (MAX_ACCURACY_DROP); else remove it, and the model
    runs in fp32. Returns {"kept", "agreement", "accuracy_fp32", "accuracy_int8", "path"}."""
    from training.data import load_mnist

    q = quantize_model(model, int8_path(model), calibration_images(data_dir))
    test = load_mnist("test", data_dir)
    a, b = labels(model, test.images), labels(q, test.images)
    acc32, acc8 = float((a == test.labels).mean()), float((b == test.labels).mean())
    kept = acc8 >= acc32 - MAX_ACCURACY_DROP
    if not kept:
        q.unlink()
        log.warning("%s: its int8 file reads MNIST test %.2f %% right against the model's %.2f %%; "
                    "the model reads in fp32", model, 100 * acc8, 100 * acc32)  # fmt: skip
    return {"kept": kept, "agreement": round(float((a == b).mean()), 5), "accuracy_fp32": acc32,
            "accuracy_int8": acc8, "path": str(q) if kept else None}  # fmt: skip


def quantize_shipped(model: Path, data_dir: Path | str | None = None, count: int = CALIBRATION) -> dict[str, str]:
    """Quantize a shipped model (`digitreader/models/default.onnx`, `.../splitter/model.onnx`) to its
    int8 file and list that file in the manifest beside it, which the runtime checks it against.
    Returns the manifest's new "int8" entry."""
    q = quantize_model(model, int8_path(model), calibration_images(data_dir, count))
    entry = {"model": q.name, "sha256": sha256_file(q), "quantized_from": sha256_file(model)}
    side = model.parent / "manifest.json"
    if side.exists():
        manifest = json.loads(side.read_text())
        if manifest.get("model") == model.name:
            manifest["int8"] = entry
            side.write_text(json.dumps(manifest, indent=1) + "\n")
    return entry


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="the fp32 ONNX model")
    ap.add_argument("--out", type=Path, default=None, help="default: MODEL's name with .int8 before .onnx")
    ap.add_argument("--data-dir", default=None, help="MNIST data directory (default: DIGITREADER_DATA_DIR)")
    ap.add_argument("--calibration", type=int, default=CALIBRATION, help="validation digits to calibrate on")
    ap.add_argument("--manifest", action="store_true",
                    help="a shipped model: also list the int8 file in the manifest.json beside MODEL")  # fmt: skip
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.manifest:
        if args.out is not None:
            ap.error("--manifest writes the int8 file beside MODEL; leave out --out")
        print(json.dumps(quantize_shipped(args.model, args.data_dir, args.calibration), indent=1))
        return 0
    images = calibration_images(args.data_dir, args.calibration)
    print(quantize_model(args.model, args.out or int8_path(args.model), images))
    return 0


if __name__ == "__main__":
    sys.exit(main())
