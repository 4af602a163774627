"""A one-epoch training run on a few thousand real MNIST samples: loss goes down, the export passes parity,
the report is written, and `digitreader train` explains what to install when torch is missing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from digitreader.errors import ExitCode
from training import archs, calibrate, export
from training.data import load_mnist
from training.nondigits import generate_nondigits
from training.run import TrainConfig, load_checkpoint_model, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    train(TrainConfig(arch="drnet", epochs=1, limit=4000, batch_size=64, data_dir=str(data_dir), out=str(out),
                      threads=1, seed=3, version="smoke"))  # fmt: skip
    return out


@pytest.mark.slow
def test_one_epoch_lowers_the_loss(smoke_run: Path, data_dir: Path) -> None:
    # The trained model's validation loss is far below an untrained one's (same seed, same data).
    history = json.loads((smoke_run / "history.json").read_text())
    assert len(history) == 1
    untrained = archs.build("drnet", 11).eval()
    test = load_mnist("test", data_dir)
    assert test.labels is not None
    x = torch.from_numpy(test.images[:1000]).float().div(255).unsqueeze(1)
    y = torch.from_numpy(test.labels[:1000])
    with torch.no_grad():
        loss0 = float(torch.nn.functional.cross_entropy(untrained(x), y))
        model, _, _ = load_checkpoint_model(smoke_run)
        loss1 = float(torch.nn.functional.cross_entropy(model(x), y))
    assert loss1 < 0.75 * loss0, (loss0, loss1)
    assert history[0]["val_loss"] < loss0


@pytest.mark.slow
def test_export_parity_and_metadata(smoke_run: Path, data_dir: Path) -> None:
    import onnx

    onnx_path = smoke_run / "model.onnx"
    model, _, _ = load_checkpoint_model(smoke_run)
    images = np.concatenate([load_mnist("test", data_dir).images[:256], generate_nondigits(64, 5)])
    diff = export.parity(model, onnx_path, images)
    assert diff <= export.PARITY_TOLERANCE  # a mismatch fails, never skips
    proto = onnx.load(str(onnx_path))
    assert not list(smoke_run.glob("*.data"))  # one file, no external data
    assert proto.opset_import[0].version == export.OPSET
    meta = {p.key: p.value for p in proto.metadata_props}
    assert {"version", "arch", "labels", "input_spec", "temperature", "threshold", "mnist_test_accuracy",
            "training_data"} <= set(meta)  # fmt: skip
    assert json.loads(meta["labels"])[-1] == "non-digit" and meta["arch"] == "drnet"
    assert "train-images-idx3-ubyte.gz" in meta["training_data"]
    batch = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param  # dynamic batch axis


@pytest.mark.slow
def test_parity_detects_a_mismatch(smoke_run: Path, data_dir: Path) -> None:
    model, _, _ = load_checkpoint_model(smoke_run)
    with torch.no_grad():
        # torch types a submodule attribute as Tensor | Module (nn.Module.__getattr__)
        model.head[1].bias.add_(1e-2)  # type: ignore[index, union-attr]  # a model that is not the exported one
    images = load_mnist("test", data_dir).images[:64]
    assert export.parity(model, smoke_run / "model.onnx", images) > export.PARITY_TOLERANCE


@pytest.mark.slow
def test_report_files(smoke_run: Path) -> None:
    report = json.loads((smoke_run / "report.json").read_text())
    for f in ("report.md", "confusion.png", "curves.png", "misclassified.png", "reliability.png"):
        assert (smoke_run / f).stat().st_size > 0, f
    assert 0.5 < report["mnist_test_accuracy"] <= 1.0
    assert len(report["per_class"]) == 10 and sum(c["support"] for c in report["per_class"]) == 10000
    assert [r["coverage"] for r in report["coverage_table_test"]][:5] == [0.9, 0.95, 0.98, 0.99, 0.995]
    assert report["ece"]["validation_after"] <= report["ece"]["validation_before"] + 1e-9
    assert 0 <= report["nondigits"]["rejected"] <= 1
    assert report["throughput_digits_per_s_1_thread"]["batch_256"] > 0
    assert "MNIST test accuracy" in (smoke_run / "report.md").read_text()


def test_temperature_and_threshold_on_known_data() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 4000)
    logits = rng.normal(0, 1, (4000, 10))
    logits[np.arange(4000), labels] += 4.0
    sharp = logits * 3.0  # the same predictions, 3x more confident
    t_raw, t = calibrate.fit_temperature(logits, labels), calibrate.fit_temperature(sharp, labels)
    assert abs(t / t_raw - 3.0) < 0.05  # temperature scaling undoes the factor exactly
    assert calibrate.ece(calibrate.softmax(sharp, t), labels) < calibrate.ece(calibrate.softmax(sharp, 1.0), labels)
    probs = calibrate.softmax(logits)
    thr = calibrate.choose_threshold(probs, labels, 0.001)
    at = calibrate.at_threshold(probs, labels, thr)
    assert at["error_rate"] <= 0.001 and at["coverage"] > 0.3


def test_reference_architectures_build() -> None:
    x = torch.zeros(2, 1, 28, 28)
    for name in archs.ARCHS:
        m = archs.build(name, 11).eval()
        assert m(x).shape == (2, 11), name
        assert archs.build(name, 10).eval()(x).shape == (2, 10), name
    assert 1e6 < archs.count_macs(archs.build("drnet")) < 5e6


def test_cli_offers_every_architecture() -> None:
    # The CLI keeps its own list (it must not import torch to parse --arch): the two must agree.
    from digitreader.cli.commands.train import ARCH_NAMES

    assert set(ARCH_NAMES) == set(archs.ARCHS)


def test_train_without_torch_says_which_extra() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from digitreader.cli.main import main\n"
        "main(['train', '--epochs', '1'])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == ExitCode.DEPENDENCY, proc.stderr
    assert "torch" in proc.stderr and "digitreader[train]" in proc.stderr
    assert proc.stdout == ""


def test_runtime_never_imports_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import digitreader.pipeline.recognize, digitreader.cli.main\n"
        "import digitreader.cli.commands.predict, digitreader.cli.commands.evaluate\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


@pytest.mark.slow
def test_seeded_runs_are_identical_and_resume_continues_exactly(data_dir: Path, tmp_path: Path) -> None:
    def cfg(out: Path) -> TrainConfig:
        return TrainConfig(arch="drnet", epochs=2, limit=600, batch_size=64, data_dir=str(data_dir), out=str(out),
                           threads=1, seed=11)  # fmt: skip

    train(cfg(tmp_path / "a"), finalize_run=False)

    def stop_after_first_epoch(phase: str, done: int, total: int, stats: dict[str, float]) -> None:
        if phase == "epoch" and done == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg(tmp_path / "b"), progress=stop_after_first_epoch, finalize_run=False)
    assert len(json.loads((tmp_path / "b" / "history.json").read_text())) == 1
    train(cfg(tmp_path / "b"), resume=True, finalize_run=False)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 1
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k


def test_train_cli_missing_data_and_bad_options(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "digitreader", "train", *args], capture_output=True, text=True,
                              cwd=ROOT)  # fmt: skip

    proc = run("--data-dir", str(tmp_path), "--epochs", "1", "--out", str(tmp_path / "run"))
    assert proc.returncode == ExitCode.DATASET and "missing MNIST file" in proc.stderr
    proc = run("--arch", "resnet999")
    assert proc.returncode == ExitCode.USAGE and "seed003" in proc.stderr
    proc = run("--finalize-only", "--out", str(tmp_path / "nothing"))
    assert proc.returncode == ExitCode.USAGE and "no checkpoint" in proc.stderr


def _untrained_run(out: Path, arch: str, data_dir: Path) -> tuple[Path, torch.nn.Module]:
    """An untrained network saved as a finished run (a run folder with its checkpoint.pt)."""
    out.mkdir()
    torch.manual_seed(11)
    model = archs.build(arch, 11).eval()
    cfg = TrainConfig(arch=arch, epochs=1, data_dir=str(data_dir), out=str(out), version="other")
    torch.save({"config": cfg.__dict__, "epoch": 0, "model": model.state_dict(), "history": []}, out / "checkpoint.pt")
    return out, model


@pytest.mark.slow
def test_ensemble_of_two_runs(smoke_run: Path, data_dir: Path, tmp_path: Path) -> None:
    # A second member: an untrained drnet saved in a run's checkpoint format.
    from training.corrections import load_weights
    from training.ensemble import build_ensemble

    other, untrained = _untrained_run(tmp_path / "other", "drnet", data_dir)
    out = tmp_path / "ens"
    report = build_ensemble([smoke_run, other], out, "ens-test")
    assert report["arch"] == "drnet+drnet"
    # The exported graph returns the mean of the members' logits (each member as exported alone).
    test = load_mnist("test", data_dir)
    images = test.images[:256]
    members = [export.onnx_logits(smoke_run / "model.onnx", images)]
    x = torch.from_numpy(images).float().div(255).unsqueeze(1)
    with torch.no_grad():
        members.append(untrained(x).numpy())
    joined = export.onnx_logits(out / "model.onnx", images)
    assert np.abs(joined - (members[0] + members[1]) / 2).max() < 1e-4
    assert np.abs(joined - members[0]).max() > 1e-2  # the untrained member really takes part
    assert report["parity_max_abs_diff"] <= export.PARITY_TOLERANCE
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert meta["arch"] == "drnet+drnet" and json.loads(meta["members"]) == [smoke_run.name, "other"]
    # The joined checkpoint reloads as an ensemble, also for fine-tuning on corrections.
    model, arch = load_weights(out)
    assert arch == "drnet+drnet" and isinstance(model, archs.Ensemble) and len(model.members) == 2


def _manual_cascade(z_first: np.ndarray, z_all: np.ndarray, gate: float, t_first: float, t_all: float) -> np.ndarray:
    """What a cascade answers, from its parts' raw logits: the first's (over t_first) where it is sure."""
    sure = calibrate.softmax(z_first, t_first).max(1) >= gate
    return np.where(sure[:, None], z_first / t_first, z_all / t_all)


def test_cascade_asks_the_second_opinion_only_when_unsure(tmp_path: Path) -> None:
    torch.manual_seed(5)
    model = archs.build("drnet>drnet+drnet-wide", 11).eval()
    assert isinstance(model, archs.Cascade) and (model.n_first, model.n_second) == (1, 2)
    model.t_first.fill_(0.05)  # untrained logits are close together: a low temperature spreads them
    model.t_all.fill_(0.7)
    x = torch.rand(64, 1, 28, 28)
    with torch.no_grad():
        z_first, z_all = (t.numpy() for t in model.raw_logits(x))
        second = model.second
        assert isinstance(second, archs.Ensemble)
        parts = [m(x).numpy() for m in (model.first, *second.members)]
    # all the members weighed alike: the first counts once, the second's two members once each
    assert np.abs(z_all - np.mean(parts, axis=0)).max() < 1e-5
    conf = calibrate.softmax(z_first, 0.05).max(1)
    gate = float(np.median(conf))
    model.gate.fill_(gate)
    with torch.no_grad():
        got = model(x).numpy()
    want = _manual_cascade(z_first, z_all, gate, 0.05, 0.7)
    assert 0 < (conf < gate).sum() < len(x)  # both ways are taken
    assert np.abs(got - want).max() < 1e-5
    # Exported: one file, the same answers (the unsure rows gathered, read, scattered back), any batch size.
    path = export.export_onnx(model, tmp_path / "c.onnx", {"arch": "drnet>drnet+drnet-wide"})
    assert not list(tmp_path.glob("*.data"))
    images = (x.numpy()[:, 0] * 255).round().astype(np.uint8)
    with torch.no_grad():
        ref = model(torch.from_numpy(images).float().div(255).unsqueeze(1)).numpy()
    assert np.abs(export.onnx_logits(path, images) - ref).max() < 1e-4
    import onnxruntime as ort

    empty = np.zeros((0, 1, 28, 28), np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.run(None, {export.INPUT_NAME: empty})[0].shape == (0, 11)
    for g in (0.0, 1.0):  # nobody asked, everybody asked
        model.gate.fill_(g)
        path = export.export_onnx(model, tmp_path / f"c{g}.onnx", {})
        with torch.no_grad():
            ref = model(torch.from_numpy(images).float().div(255).unsqueeze(1)).numpy()
        assert np.abs(export.onnx_logits(path, images) - ref).max() < 1e-4
        assert np.abs(ref - (z_first / 0.05 if g == 0.0 else z_all / 0.7)).max() < 1e-3
    # In training mode (fine-tuning) every crop goes through all the members.
    model.train()
    torch.manual_seed(1)  # the same dropout both times
    trained_on = model(x)
    torch.manual_seed(1)
    assert torch.allclose(trained_on, model.raw_logits(x)[1], atol=1e-5)


@pytest.mark.slow
def test_cascade_of_runs(smoke_run: Path, data_dir: Path, tmp_path: Path) -> None:
    from digitreader.pipeline.recognize import Predictor
    from digitreader.settings import Settings
    from training.cascade import build_cascade
    from training.corrections import load_weights

    other, untrained = _untrained_run(tmp_path / "other", "drnet-wide", data_dir)
    out = tmp_path / "cascade"
    report = build_cascade(smoke_run, [smoke_run, other], out, "cascade-test", gate=0.99)
    assert report["arch"] == "drnet>drnet+drnet-wide"
    assert report["parity_max_abs_diff"] <= export.PARITY_TOLERANCE
    # The checkpoint keeps the fitted temperatures, and reloads as a cascade (also for fine-tuning).
    model, arch = load_weights(out)
    assert arch == "drnet>drnet+drnet-wide" and isinstance(model, archs.Cascade)
    assert float(model.gate) == pytest.approx(0.99) and float(model.t_first) != 1.0 and float(model.t_all) != 1.0
    # The exported graph answers as the cascade does, computed from the parts' own logits.
    images = load_mnist("test", data_dir).images[:512]
    z_first = export.onnx_logits(smoke_run / "model.onnx", images)
    x = torch.from_numpy(images).float().div(255).unsqueeze(1)
    with torch.no_grad():
        z_all = (2 * z_first + untrained(x).numpy()) / 3
    want = _manual_cascade(z_first, z_all, 0.99, float(model.t_first), float(model.t_all))
    sure = calibrate.softmax(z_first, float(model.t_first)).max(1) >= 0.99
    assert 0 < sure.sum() < len(images)
    assert np.abs(export.onnx_logits(out / "model.onnx", images) - want).max() < 1e-3
    # The service reads it like any model.
    predictor = Predictor.load(out / "model.onnx", Settings(precision="fp32"))
    assert predictor.info.arch == "drnet>drnet+drnet-wide"
    rec = predictor.predict(images[:64])
    assert rec.probs.shape == (64, 11) and np.allclose(rec.probs.sum(1), 1, atol=1e-5)


@pytest.mark.slow
def test_ship_with_a_review_threshold(smoke_run: Path, tmp_path: Path) -> None:
    from digitreader.pipeline.recognize import Predictor
    from digitreader.settings import Settings
    from training.ship import ship

    models = tmp_path / "models"
    manifest = ship(smoke_run, models=models, review_threshold=0.97, threshold_rule="chosen on pages")
    run_threshold = json.loads((smoke_run / "report.json").read_text())["threshold"]
    assert manifest["threshold"] == 0.97 and manifest["threshold_model_validation"] == run_threshold
    # The runtime reads the new threshold from the shipped file (its SHA-256 checked against the manifest).
    settings = Settings(_env_file=None, home=tmp_path / "home")  # type: ignore[call-arg]
    pred = Predictor.load(models / "default.onnx", settings)
    assert pred.info.threshold == pytest.approx(0.97)
    assert pred.info.sha256 == manifest["sha256"]
    # ... and its int8 file, made after the threshold was written, which the CPU reads with.
    assert manifest["int8"]["quantized_from"] == manifest["sha256"]  # type: ignore[index]
    assert pred.info.precision == "int8" and pred.info.metadata["threshold"] == "0.970000"
    # Same graph and weights: the logits do not change.
    test = load_mnist("test", Path(json.loads((smoke_run / "config.json").read_text())["data_dir"]))
    assert np.array_equal(export.onnx_logits(models / "default.onnx", test.images[:64]),
                          export.onnx_logits(smoke_run / "model.onnx", test.images[:64]))  # fmt: skip


@pytest.mark.slow
def test_ship_as_the_splitter(smoke_run: Path, tmp_path: Path) -> None:
    from digitreader.pipeline.recognize import Predictor
    from digitreader.pipeline.split import default_scorer, splitter_model
    from digitreader.settings import Settings
    from training.ship import ship_splitter

    models = tmp_path / "models"
    manifest = ship_splitter(smoke_run, models=models, version="splitter-test", rule="smoke")
    assert manifest["role"] == "splitter" and manifest["version"] == "splitter-test"
    path = models / "splitter" / "model.onnx"
    settings = Settings(_env_file=None, home=tmp_path / "home", splitter=str(path))  # type: ignore[call-arg]
    pred = Predictor.load(splitter_model(settings), settings)  # its SHA-256 checked against the manifest
    assert pred.info.version == "splitter-test" and pred.info.sha256 == manifest["sha256"]
    assert pred.info.metadata["role"] == "splitter" and pred.info.precision == "int8"  # its int8 file too
    assert (models / "splitter" / "model.int8.onnx").is_file()
    test = load_mnist("test", Path(json.loads((smoke_run / "config.json").read_text())["data_dir"]))
    assert np.array_equal(
        export.onnx_logits(path, test.images[:64]), export.onnx_logits(smoke_run / "model.onnx", test.images[:64])
    )
    assert default_scorer(path) is not None
