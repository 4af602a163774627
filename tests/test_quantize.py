"""The int8 file of a model (`training.quantize`): how far it may read differently from its fp32 model,
which file the runtime reads with (DIGITREADER_PRECISION), and the shipped pair's binding."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from digitreader.errors import ModelError
from digitreader.pipeline import recognize
from digitreader.pipeline.recognize import Predictor, choose_precision, int8_path
from digitreader.settings import Settings
from training.data import load_mnist
from training.quantize import calibration_images, quantize_model, quantize_shipped

CPU = ["CPUExecutionProvider"]


def _settings(precision: str = "auto") -> Settings:
    return Settings(_env_file=None, precision=precision)  # type: ignore[call-arg]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A copy of the shipped fp32 model with its own int8 file made here, beside it."""
    folder = tmp_path_factory.mktemp("q")
    m = recognize.read_manifest()
    model = folder / "default.onnx"
    shutil.copyfile(recognize.MODELS_DIR / m["model"], model)
    quantize_model(model, int8_path(model), calibration_images(data_dir, 512))
    return model


def test_int8_reads_mnist_test_like_its_fp32_model(pair: Path, data_dir: Path) -> None:
    test = load_mnist("test", data_dir)
    assert test.labels is not None
    fp32 = Predictor.load(pair, _settings(precision="fp32")).predict(test.images)
    int8 = Predictor.load(pair, _settings(precision="int8")).predict(test.images)
    agree = float((fp32.labels == int8.labels).mean())
    acc32 = float((fp32.labels == test.labels).mean())
    acc8 = float((int8.labels == test.labels).mean())
    # Measured (7-bit weights): 4 labels of 10,000 change, on CPUs with and without VNNI; confidences
    # move a little.
    assert agree >= 0.999, agree
    assert abs(acc8 - acc32) <= 0.001, (acc32, acc8)
    moved = np.abs(fp32.confidence - int8.confidence)
    assert float(np.quantile(moved, 0.99)) < 0.05, float(np.quantile(moved, 0.99))
    # Review flags: the int8 file flags nearly the same digits at the model's threshold.
    assert float((fp32.needs_review != int8.needs_review).mean()) < 0.005


def test_int8_metadata_binds_it_to_its_model(pair: Path) -> None:
    p = Predictor.load(pair, _settings(precision="int8"))
    meta = p.info.metadata
    assert meta["precision"] == "int8" and meta["quantized_from"] == recognize._sha256(pair)
    # The model's identity stays the fp32 file's: the registry, the stored digits and retraining name it.
    assert p.info.path == str(pair) and p.info.sha256 == recognize._sha256(pair)
    assert p.info.precision == "int8" and p.info.runtime_path == str(int8_path(pair))
    assert p.info.version == Predictor.load(pair, _settings(precision="fp32")).info.version
    assert p.info.as_dict()["precision"] == "int8"


def test_auto_reads_with_int8_on_the_cpu_and_fp32_on_cuda(pair: Path) -> None:
    digest = recognize._sha256(pair)
    assert choose_precision(pair, digest, _settings(), CPU) == int8_path(pair)
    assert choose_precision(pair, digest, _settings(), ["CUDAExecutionProvider", *CPU]) is None
    assert choose_precision(pair, digest, _settings(precision="fp32"), CPU) is None
    assert Predictor.load(pair, _settings()).info.precision == "int8"
    assert Predictor.load(pair, _settings(precision="fp32")).info.runtime_path == str(pair)
    with pytest.raises(ModelError) as e:
        choose_precision(pair, digest, _settings(precision="int4"), CPU)
    assert e.value.code == "precision"


def test_no_int8_file(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    shutil.copyfile(recognize.MODELS_DIR / recognize.read_manifest()["model"], model)
    assert Predictor.load(model, _settings()).info.precision == "fp32"  # auto: fp32, quietly
    with pytest.raises(ModelError) as e:
        Predictor.load(model, _settings(precision="int8"))
    assert e.value.code == "missing" and "training.quantize" in (e.value.hint or "")


def test_a_stale_or_damaged_int8_file_is_not_used(pair: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # An int8 file made from another model (here: the splitter's) beside this one.
    model = tmp_path / "default.onnx"
    shutil.copyfile(pair, model)
    shutil.copyfile(int8_path(pair), int8_path(model))
    assert choose_precision(model, recognize._sha256(model), _settings(), CPU) == int8_path(model)
    other = tmp_path / "other.onnx"
    shutil.copyfile(recognize.MODELS_DIR / "splitter" / "model.onnx", other)
    shutil.copyfile(int8_path(model), int8_path(other))
    with caplog.at_level(logging.WARNING):
        assert choose_precision(other, recognize._sha256(other), _settings(), CPU) is None
    assert "was not made from other.onnx" in caplog.text
    with pytest.raises(ModelError):
        choose_precision(other, recognize._sha256(other), _settings(precision="int8"), CPU)
    # A manifest that lists the int8 file with another SHA-256: not used either.
    (tmp_path / "manifest.json").write_text(json.dumps({
        "model": "default.onnx", "sha256": recognize._sha256(model),
        "int8": {"model": "default.int8.onnx", "sha256": "0" * 64},
    }))  # fmt: skip
    assert choose_precision(model, recognize._sha256(model), _settings(), CPU) is None


def test_quantize_shipped_lists_the_int8_file_in_the_manifest(tmp_path: Path, data_dir: Path) -> None:
    m = recognize.read_manifest()
    model = tmp_path / m["model"]
    shutil.copyfile(recognize.MODELS_DIR / m["model"], model)
    (tmp_path / "manifest.json").write_text(json.dumps({"model": m["model"], "sha256": m["sha256"]}))
    entry = quantize_shipped(model, data_dir, 256)
    written = json.loads((tmp_path / "manifest.json").read_text())
    assert written["int8"] == entry and entry["sha256"] == recognize._sha256(int8_path(model))
    assert entry["quantized_from"] == m["sha256"]
    assert Predictor.load(model, _settings()).info.precision == "int8"


@pytest.mark.parametrize("folder", ["", "splitter"])
def test_shipped_int8_files_belong_to_the_shipped_models(folder: str) -> None:
    """A shipped model retrained and shipped without its int8 file again would fail here."""
    base = recognize.MODELS_DIR / folder if folder else recognize.MODELS_DIR
    m = json.loads((base / "manifest.json").read_text())
    assert "int8" in m, f"{base}/manifest.json lists no int8 file: python -m training.quantize MODEL --manifest"
    model, q = base / m["model"], base / m["int8"]["model"]
    assert q == int8_path(model) and recognize._sha256(q) == m["int8"]["sha256"]
    assert choose_precision(model, recognize._sha256(model), _settings(), CPU) == q
    low, high = int8_weight_range(q)
    assert low >= -64 and high <= 64, (low, high)


def int8_weight_range(path: Path) -> tuple[int, int]:
    """The smallest and largest quantized weight of an int8 file (its int8 initializers)."""
    import onnx
    from onnx import numpy_helper

    values = [
        numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer if t.data_type == onnx.TensorProto.INT8
    ]
    assert values, f"{path} has no int8 weights"
    return min(int(v.min()) for v in values), max(int(v.max()) for v in values)


def test_int8_weights_fit_in_7_bits(pair: Path, tmp_path: Path, data_dir: Path) -> None:
    """Weights in 7 bits (onnxruntime's reduce_range): on an x86 CPU without VNNI, onnxruntime adds pairs
    of uint8 x int8 products in 16 bits with saturation, which full 8-bit weights overflow (the shipped
    reader's first int8 file read 32 MNIST test digits of 10,000 differently there, 2 with VNNI). With
    |w| <= 64 no pair can overflow (2 x 255 x 64 < 32,768), so an int8 file reads alike on any CPU."""
    low, high = int8_weight_range(int8_path(pair))
    assert low >= -64 and high <= 64 and high - low > 100, (low, high)
    full = tmp_path / "full.int8.onnx"
    quantize_model(pair, full, calibration_images(data_dir, 256), reduce_range=False)
    low, high = int8_weight_range(full)
    assert low < -64 or high > 64, (low, high)  # what 8-bit weights would use


def test_an_int8_file_with_8_bit_weights_is_not_used_on_a_cpu_that_saturates(
    pair: Path, tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An int8 file made before the weights were 7 bits (metadata weight_bits 8, or none) reads in fp32
    on an x86 CPU without VNNI; a 7-bit one is used there, and either is used on a CPU with VNNI."""
    assert recognize.saturating_int8_cpu(frozenset({"avx2", "fma"}), "x86_64")
    assert not recognize.saturating_int8_cpu(frozenset({"avx2", "avx512_vnni"}), "x86_64")
    assert not recognize.saturating_int8_cpu(frozenset({"avx2", "avx_vnni"}), "AMD64")
    assert not recognize.saturating_int8_cpu(frozenset({"asimd"}), "aarch64")  # ARM: no such instruction
    old = tmp_path / "default.onnx"
    shutil.copyfile(pair, old)
    quantize_model(old, int8_path(old), calibration_images(data_dir, 256), reduce_range=False)
    digest = recognize._sha256(old)
    for saturates in (True, False):
        monkeypatch.setattr(recognize, "saturating_int8_cpu", lambda saturates=saturates: saturates)
        assert choose_precision(pair, recognize._sha256(pair), _settings(), CPU) == int8_path(pair)  # 7 bits
        with caplog.at_level(logging.WARNING):
            chosen = choose_precision(old, digest, _settings(), CPU)
        assert chosen == (None if saturates else int8_path(old))
    assert "has 8-bit weights" in caplog.text and "training.quantize" in caplog.text


def test_a_registered_model_keeps_its_int8_file(pair: Path, tmp_path: Path, settings: Settings) -> None:
    """A retrained model is quantized before it is registered; the registry copies the pair, so the
    promoted model reads with int8 on a CPU like the shipped one (tests/test_retrain.py runs it all)."""
    from digitreader import registry
    from digitreader.db import session_scope
    from tests.test_registry import _copy_with_version

    cand = _copy_with_version(pair, tmp_path / "cand.onnx", "cand-q")
    quantize_model(cand, int8_path(cand), calibration_images(settings.data_dir, 256))
    with session_scope(settings) as s:
        mv = registry.register_model(s, settings, cand)
        dest = Path(str(mv.path))
    assert dest != cand and int8_path(dest).is_file()
    p = Predictor.load(dest, settings)
    assert p.info.precision == "int8" and p.info.version == "cand-q" and p.info.sha256 == mv.sha256


def test_agreement_tells_a_model_s_own_int8_file_from_another_model(pair: Path, data_dir: Path) -> None:
    """Agreement tells a model's own int8 file from another network's (retraining reports it)."""
    from training.quantize import agreement

    images = load_mnist("test", data_dir).images[:3000]
    assert agreement(pair, int8_path(pair), images) >= 0.999
    other = recognize.MODELS_DIR / "splitter" / "model.int8.onnx"  # another network's int8 file
    assert agreement(pair, other, images) < 0.999
