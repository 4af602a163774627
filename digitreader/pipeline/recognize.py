"""Recognize: (N, 28, 28) uint8 MNIST-form crops -> labels and calibrated probabilities (onnxruntime only).

The ONNX graph returns logits (N, 11): digits 0-9 and 10 = "not a digit". Softmax with the model's
fitted temperature, the confidence and the review threshold live here, in Python. The shipped model
is found through `digitreader/models/manifest.json`, whose SHA-256 is checked on load.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from digitreader.cpu import saturating_int8_cpu
from digitreader.errors import MissingDependencyError, ModelError
from digitreader.hashing import sha256_file
from digitreader.settings import Settings, get_settings
from digitreader.types import LABELS, NON_DIGIT

log = logging.getLogger(__name__)

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
MANIFEST = MODELS_DIR / "manifest.json"
_logged_providers: set[tuple[tuple[str, ...], str]] = set()
_log_lock = threading.Lock()


@dataclass(frozen=True)
class Recognition:
    """The model's reading of N crops."""

    labels: np.ndarray  # (N,) int64: 0-9, or 10 = not a digit
    probs: np.ndarray  # (N, C) float32 calibrated probabilities (C = 11, or 10 for a digits-only model)
    threshold: float  # review threshold these were made with

    @property
    def confidence(self) -> np.ndarray:
        """(N,) float32: the calibrated probability of the predicted label."""
        if len(self.probs) == 0:
            return np.zeros(0, np.float32)
        return self.probs.max(axis=1)

    @property
    def needs_review(self) -> np.ndarray:
        """(N,) bool: confidence below the threshold (or not a digit)."""
        return (self.confidence < self.threshold) | (self.labels == NON_DIGIT)

    def top(self, k: int = 3) -> list[list[tuple[int, float]]]:
        """Per crop, the k most probable labels as (label, probability), best first."""
        order = np.argsort(-self.probs, axis=1, kind="stable")[:, :k]
        return [[(int(c), float(self.probs[i, c])) for c in row] for i, row in enumerate(order)]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class ModelInfo:
    path: str
    sha256: str
    version: str
    arch: str
    labels: tuple[str, ...]
    temperature: float
    threshold: float  # the model's own review threshold (settings.threshold overrides it at predict time)
    accuracy: float | None  # MNIST test accuracy recorded at export
    provider: str
    metadata: dict[str, str] = field(default_factory=dict)
    #: "fp32", or "int8" when the model's int8 file runs (`runtime_path`; `path` and `sha256` stay the
    #: model's own fp32 file, which the manifest or the registry names and retraining starts from).
    precision: str = "fp32"
    runtime_path: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "version": self.version, "arch": self.arch,
                "labels": list(self.labels), "temperature": self.temperature, "threshold": self.threshold,
                "mnist_test_accuracy": self.accuracy, "provider": self.provider, "precision": self.precision,
                "runtime_path": self.runtime_path or self.path}  # fmt: skip


_sha256 = sha256_file  # kept for callers of the old private name


def read_manifest(manifest: Path = MANIFEST) -> dict[str, Any]:
    """The shipped model's manifest: {"model": "default.onnx", "sha256": ..., ...}."""
    if not manifest.exists():
        raise ModelError(f"no model manifest at {manifest}", code="missing",
                         hint="reinstall digitreader, or set DIGITREADER_MODEL_PATH to an ONNX model")  # fmt: skip
    try:
        data = json.loads(manifest.read_text())
        data["model"], data["sha256"]  # noqa: B018
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{manifest}: not a valid manifest ({exc})", code="corrupt") from exc
    return data


def side_manifest(model: Path) -> dict[str, Any]:
    """The manifest beside a model file when it names that file ({"model": NAME, "sha256", ...,
    "int8": {...}}), else {} (none there, another model's, or unreadable)."""
    side = model.parent / "manifest.json"
    try:
        m = json.loads(side.read_text()) if side.exists() else {}
    except (OSError, ValueError):
        return {}
    return m if isinstance(m, dict) and m.get("model") == model.name else {}


def resolve_model(path: Path | str | None, settings: Settings) -> tuple[Path, str | None]:
    """(model path, expected sha256 or None). Explicit path > settings.model_path > manifest."""
    explicit = path or settings.model_path
    if explicit:
        p = Path(explicit).expanduser()
        # A model with a manifest beside it (a models folder) is checked too.
        return p, side_manifest(p).get("sha256")
    m = read_manifest()
    return MODELS_DIR / m["model"], m["sha256"]


def int8_path(model: Path) -> Path:
    """The int8 file of a model (`training.quantize`): `default.onnx` -> `default.int8.onnx`."""
    return model.with_name(model.stem + ".int8" + model.suffix)


def _int8_expected(model: Path) -> str | None:
    """The SHA-256 a manifest beside `model` lists for its int8 file ({"int8": {"model", "sha256"}})."""
    entry = side_manifest(model).get("int8")
    if isinstance(entry, dict) and entry.get("model") == int8_path(model).name and "sha256" in entry:
        return str(entry["sha256"])
    return None


def choose_precision(model: Path, digest: str, settings: Settings, providers: list[str]) -> Path | None:
    """The int8 file to run instead of `model` (whose SHA-256 is `digest`), or None for the fp32 file.

    DIGITREADER_PRECISION: "fp32"; "int8" (an error when the model has no int8 file made from it);
    "auto" (default): int8 when recognition runs on the CPU and the model has one, else fp32. CUDA
    runs fp32: its provider has no kernels for the int8 graph's quantized operators. The int8 file
    must say it was made from this very model (metadata `quantized_from` == `digest`), and match
    its manifest's SHA-256 where a manifest lists it; an int8 file with 8-bit weights (made before
    `training.quantize` wrote 7-bit ones) is not used on an x86 CPU without VNNI, where it would read
    differently (`saturating_int8_cpu`).
    """
    want = settings.precision.lower()
    if want not in ("auto", "fp32", "int8"):
        raise ModelError(f"DIGITREADER_PRECISION={settings.precision!r}: use auto, fp32 or int8", code="precision")
    if want == "fp32" or (want == "auto" and "CUDAExecutionProvider" in providers):
        return None
    q = int8_path(model)
    problem = None
    if not q.is_file():
        problem = f"{model.name} has no int8 file ({q.name})"
    else:
        expected = _int8_expected(model)
        meta = _metadata_or_empty(q) if expected is None or _sha256(q) == expected.lower() else None
        if meta is None:
            problem = f"{q}: SHA-256 does not match its manifest"
        elif meta.get("quantized_from") != digest:
            problem = f"{q} was not made from {model.name} (its quantized_from is not that file's SHA-256)"
        elif meta.get("weight_bits") != "7" and saturating_int8_cpu():
            problem = (f"{q} has 8-bit weights, which this CPU (x86 without VNNI) adds with saturation: "
                       f"re-quantize it with python -m training.quantize {model}")  # fmt: skip
    if problem is None:
        return q
    if want == "int8":
        raise ModelError(f"DIGITREADER_PRECISION=int8, but {problem}", code="missing",
                         hint=f"python -m training.quantize {model}, or DIGITREADER_PRECISION=auto")  # fmt: skip
    if q.is_file():  # a stale or damaged int8 file: say so, read with the fp32 one
        log.warning("reading with %s in fp32: %s", model.name, problem)
    return None


def onnx_metadata(path: Path | str) -> dict[str, str]:
    """An ONNX file's metadata_props, read with onnxruntime (the onnx package is not a runtime
    dependency). Raises `ModelError` when onnxruntime cannot load the file."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise ModelError(f"{path}: onnxruntime cannot load it ({exc})", code="corrupt") from exc
    return dict(sess.get_modelmeta().custom_metadata_map)


def _metadata_or_empty(path: Path) -> dict[str, str]:
    try:
        return onnx_metadata(path)
    except ModelError:  # an unreadable file is not this model's int8 file
        return {}


def _providers(settings: Settings, available: list[str]) -> list[str]:
    want = settings.providers.lower()
    if want == "cpu":
        return ["CPUExecutionProvider"]
    if want == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise ModelError("DIGITREADER_PROVIDERS=cuda, but this onnxruntime has no CUDA provider",
                             code="provider",
                             hint="install digitreader[gpu] (onnxruntime-gpu), or use auto/cpu")  # fmt: skip
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if want != "auto":
        raise ModelError(f"DIGITREADER_PROVIDERS={settings.providers!r}: use auto, cpu or cuda", code="provider")
    return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []) + ["CPUExecutionProvider"]


class Predictor:
    """An ONNX digit model with its calibration. Thread-safe for `predict` (onnxruntime sessions are)."""

    def __init__(self, session: Any, info: ModelInfo, settings: Settings) -> None:
        self.session = session
        self.info = info
        self.settings = settings
        self.threshold = settings.threshold if settings.threshold is not None else info.threshold
        self._input = session.get_inputs()[0].name

    @classmethod
    def load(cls, path: Path | str | None = None, settings: Settings | None = None) -> Predictor:
        """Load `path` (default: settings.model_path, else the shipped model), SHA-256 checked."""
        settings = settings or get_settings()
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise MissingDependencyError("onnxruntime", "cpu", "recognition") from exc
        model_path, expected = resolve_model(path, settings)
        if not model_path.exists():
            raise ModelError(f"model file not found: {model_path}", code="missing",
                             hint="reinstall digitreader, or set DIGITREADER_MODEL_PATH to an ONNX model")  # fmt: skip
        if not model_path.is_file():
            raise ModelError(f"the model is not a file: {model_path}", code="missing",
                             hint="set DIGITREADER_MODEL_PATH to an ONNX model file")  # fmt: skip
        try:
            digest = _sha256(model_path)
        except OSError as exc:
            raise ModelError(f"cannot read the model {model_path}: {exc.strerror or exc}", code="unreadable") from exc
        if expected is not None and digest != expected.lower():
            raise ModelError(
                f"{model_path}: SHA-256 {digest[:16]}... does not match its manifest ({expected[:16]}...)",
                code="checksum",
                hint="the model file is corrupt or was replaced; reinstall digitreader or restore the file",
            )
        so = ort.SessionOptions()
        so.intra_op_num_threads = settings.intra_op_threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        providers = _providers(settings, ort.get_available_providers())
        run_path = choose_precision(model_path, digest, settings, providers) or model_path
        session = _session(ort, run_path, so, providers)
        used = tuple(session.get_providers())
        if run_path == model_path and "CUDAExecutionProvider" in providers and used[0] == "CPUExecutionProvider":
            # onnxruntime-gpu lists CUDA on a machine without a GPU, and the session fell back to the CPU:
            # there the int8 file is the faster one (auto).
            cpu_path = choose_precision(model_path, digest, settings, ["CPUExecutionProvider"])
            if cpu_path is not None:
                run_path, session = cpu_path, _session(ort, cpu_path, so, ["CPUExecutionProvider"])
                used = tuple(session.get_providers())
        with _log_lock:
            if (used, run_path.name) not in _logged_providers:
                _logged_providers.add((used, run_path.name))
                log.info("recognition runs on %s (%s)", used[0], run_path.name)
        meta = session.get_modelmeta().custom_metadata_map
        info = _info(model_path, digest, meta, used[0], run_path)
        shape = session.get_inputs()[0].shape
        n_out = session.get_outputs()[0].shape[-1]
        if list(shape[1:]) != [1, 28, 28] or n_out not in (10, 11):
            raise ModelError(f"{model_path}: input {shape} / output {n_out} classes; "
                             "expected (N,1,28,28) -> 10 or 11", code="corrupt")  # fmt: skip
        return cls(session, info, settings)

    def logits(self, crops: np.ndarray) -> np.ndarray:
        """(N, 28, 28) uint8 crops (ink high) -> (N, C) float32 raw logits, in batches of settings.batch_size."""
        x = np.asarray(crops)
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3 or x.shape[1:] != (28, 28):
            raise ValueError(f"crops must be (N, 28, 28), got {x.shape}")
        n_out = len(self.info.labels)
        if len(x) == 0:
            return np.zeros((0, n_out), np.float32)
        scale = np.float32(1 / 255) if x.dtype == np.uint8 else np.float32(1)
        bs = self.settings.batch_size
        out = []
        for i in range(0, len(x), bs):
            batch = (x[i : i + bs].astype(np.float32) * scale)[:, None]
            out.append(self.session.run(None, {self._input: batch})[0])
        return np.concatenate(out).astype(np.float32, copy=False)

    def predict(self, crops: np.ndarray) -> Recognition:
        """Labels (argmax) and calibrated probabilities softmax(logits / T)."""
        z = self.logits(crops).astype(np.float64) / self.info.temperature
        z -= z.max(axis=1, keepdims=True) if len(z) else 0
        e = np.exp(z)
        probs = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
        return Recognition(probs.argmax(axis=1).astype(np.int64), probs, float(self.threshold))


def _session(ort: Any, path: Path, so: Any, providers: list[str]) -> Any:
    try:
        return ort.InferenceSession(str(path), so, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise ModelError(f"{path}: onnxruntime cannot load it ({exc})", code="corrupt") from exc


def _info(path: Path, digest: str, meta: dict[str, str], provider: str, run_path: Path | None = None) -> ModelInfo:
    def num(key: str, default: float | None) -> float | None:
        try:
            return float(meta[key])
        except (KeyError, ValueError):
            return default

    try:
        labels = tuple(json.loads(meta["labels"])) if "labels" in meta else LABELS
    except ValueError:
        labels = LABELS
    temperature = num("temperature", 1.0) or 1.0
    return ModelInfo(
        path=str(path), sha256=digest, version=meta.get("version", "unknown"), arch=meta.get("arch", "unknown"),
        labels=labels, temperature=temperature, threshold=num("threshold", 0.9) or 0.0,
        accuracy=num("mnist_test_accuracy", None), provider=provider, metadata=dict(meta),
        precision=meta.get("precision", "fp32"), runtime_path=str(run_path or path),
    )  # fmt: skip
