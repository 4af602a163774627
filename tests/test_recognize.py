"""The runtime recognizer with the shipped model: onnxruntime only, SHA-256 checked, batched, calibrated."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from digitreader.errors import ExitCode, ModelError
from digitreader.pipeline import recognize
from digitreader.pipeline.recognize import Predictor
from digitreader.settings import Settings
from training.data import load_mnist
from training.nondigits import generate_nondigits


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.load(settings=Settings(_env_file=None, batch_size=300))  # type: ignore[call-arg]


def test_shipped_model_reads_mnist_test(predictor: Predictor, data_dir: Path) -> None:
    test = load_mnist("test", data_dir)
    assert test.labels is not None
    rec = predictor.predict(test.images[:2000])
    assert rec.probs.shape == (2000, 11) and rec.labels.shape == (2000,)
    np.testing.assert_allclose(rec.probs.sum(axis=1), 1.0, atol=1e-5)
    acc = float((rec.labels == test.labels[:2000]).mean())
    assert acc > 0.97, acc
    # The manifest records the model's accuracy; the runtime reproduces it on this sample within noise.
    assert predictor.info.accuracy is not None and abs(acc - predictor.info.accuracy) < 0.02
    top = rec.top(3)
    assert len(top) == 2000 and top[0][0][0] == rec.labels[0] and top[0][0][1] >= top[0][1][1] >= top[0][2][1]


def test_batching_does_not_change_results(data_dir: Path) -> None:
    test = load_mnist("test", data_dir)
    a = Predictor.load(settings=Settings(_env_file=None, batch_size=7)).logits(test.images[:50])  # type: ignore[call-arg]
    b = Predictor.load(settings=Settings(_env_file=None, batch_size=1024)).logits(test.images[:50])  # type: ignore[call-arg]
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_calibration_and_threshold_from_the_model(predictor: Predictor, data_dir: Path) -> None:
    info = predictor.info
    assert info.temperature > 0 and 0 < info.threshold < 1 and info.provider == "CPUExecutionProvider"
    x = load_mnist("test", data_dir).images[:100]
    z = predictor.logits(x) / info.temperature
    p = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(predictor.predict(x).probs, p / p.sum(1, keepdims=True), rtol=1e-4, atol=1e-6)
    override = Predictor.load(settings=Settings(_env_file=None, threshold=0.5))  # type: ignore[call-arg]
    assert override.predict(x).threshold == 0.5


def test_nondigits_and_empty_crops_come_out_as_not_a_digit(predictor: Predictor) -> None:
    rec = predictor.predict(generate_nondigits(300, seed=424242))
    assert float((rec.labels == 10).mean()) > 0.9
    assert predictor.predict(np.zeros((3, 28, 28), np.uint8)).labels.tolist() == [10, 10, 10]
    assert predictor.predict(np.zeros((0, 28, 28), np.uint8)).probs.shape == (0, 11)


def test_sha256_mismatch_is_model_error(tmp_path: Path) -> None:
    manifest = recognize.read_manifest()
    shutil.copyfile(recognize.MODELS_DIR / manifest["model"], tmp_path / "default.onnx")
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "sha256": "0" * 64}))
    with pytest.raises(ModelError) as e:
        Predictor.load(tmp_path / "default.onnx", Settings(_env_file=None))  # type: ignore[call-arg]
    assert e.value.code == "checksum" and e.value.exit_code == ExitCode.MODEL and e.value.hint


def test_missing_and_corrupt_models(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as e:
        Predictor.load(tmp_path / "nope.onnx", Settings(_env_file=None))  # type: ignore[call-arg]
    assert e.value.code == "missing"
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelError) as e:
        Predictor.load(bad, Settings(_env_file=None))  # type: ignore[call-arg]
    assert e.value.code == "corrupt"


def test_shipped_manifest_matches_the_file() -> None:
    m = recognize.read_manifest()
    assert recognize._sha256(recognize.MODELS_DIR / m["model"]) == m["sha256"]
    assert (recognize.MODELS_DIR / "report.md").exists() and (recognize.MODELS_DIR / "report.json").exists()


def test_evaluate_command_prints_json(data_dir: Path) -> None:
    import os
    import subprocess
    import sys

    def run(precision: str) -> tuple[dict[str, Any], str]:
        proc = subprocess.run([sys.executable, "-m", "digitreader", "evaluate", "--data-dir", str(data_dir),
                               "--nondigits", "200"], capture_output=True, text=True,
                              env={**os.environ, "DIGITREADER_PRECISION": precision})  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout), proc.stderr

    recorded = recognize.read_manifest()["mnist_test_accuracy"]
    out, stderr = run("fp32")  # the model itself reproduces the accuracy its manifest records
    assert out["n"] == 10000 and abs(out["accuracy"] - recorded) < 1e-9 and out["model"]["precision"] == "fp32"
    assert 0 < out["coverage_at_threshold"] <= 1 and out["digits_per_s"] > 0 and 0 <= out["nondigits_rejected"] <= 1
    assert "accuracy" in stderr and "fp32" in stderr  # the human summary goes to stderr
    out, stderr = run("auto")  # what a CPU runs: its int8 file, within 0.1 point of it
    assert out["model"]["precision"] == "int8" and abs(out["accuracy"] - recorded) <= 0.001 and "int8" in stderr


def test_evaluate_missing_data_is_dataset_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "digitreader", "evaluate", "--data-dir", str(tmp_path)],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == ExitCode.DATASET and "missing MNIST file" in proc.stderr and proc.stdout == ""
