"""Model registry: frozen split, promotion gate, promote/rollback, live pick-up by the pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from digitreader import registry
from digitreader.db import Digit, ModelVersion, session_scope
from digitreader.db.session import dispose_engines
from digitreader.errors import ExitCode, NotFoundError, UsageError
from digitreader.pipeline.recognize import MODELS_DIR, read_manifest
from digitreader.settings import Settings


def test_frozen_split_is_deterministic_and_about_the_share() -> None:
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, 784, dtype=np.uint8).tobytes() for _ in range(4000)]
    first = [registry.is_frozen(c) for c in crops]
    assert first == [registry.is_frozen(c) for c in reversed(crops)][::-1]  # order does not matter
    share = sum(first) / len(first)
    assert abs(share - registry.FROZEN_SHARE) < 0.03
    assert sum(registry.is_frozen(c, 0.5) for c in crops) > sum(first)  # a larger share keeps the old ones
    assert all(registry.is_frozen(c, 0.5) for c, f in zip(crops, first, strict=True) if f)


def _m(mnist: float, corr: float | None, n: int = 50) -> dict[str, float | int | None]:
    return {"mnist_test_accuracy": mnist, "corrected_accuracy": corr, "corrected_n": n}


def test_gate_rules() -> None:
    assert registry.gate(_m(0.9890, 0.80), _m(0.9894, 0.70)).passed  # -0.04 points: allowed
    assert not registry.gate(_m(0.9888, 0.80), _m(0.9894, 0.70)).passed  # -0.06 points: refused
    assert not registry.gate(_m(0.9900, 0.70), _m(0.9894, 0.70)).passed  # not better on corrections
    assert not registry.gate(_m(0.9900, None, 0), _m(0.9894, None, 0)).passed  # nothing to show it
    assert registry.gate(_m(0.99, 0.8), None).passed  # first model


def _copy_with_version(src: Path, dst: Path, version: str) -> Path:
    onnx = pytest.importorskip("onnx")
    proto = onnx.load(str(src))
    for p in proto.metadata_props:
        if p.key == "version":
            p.value = version
    extra = proto.metadata_props.add()
    extra.key, extra.value = "copied_to", dst.name  # other content, same weights
    onnx.save_model(proto, str(dst))
    return dst


def test_promote_rollback_and_live_pickup(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    from digitreader.pipeline.process import load_predictor, process_batch
    from digitreader.synth import generate
    from tests.test_review import _cli

    settings = Settings(home=tmp_path / "home", data_dir=data_dir, workers=1, _env_file=None)  # type: ignore[call-arg]
    shipped = MODELS_DIR / read_manifest()["model"]
    live = load_predictor(settings)
    assert isinstance(live, registry.LivePredictor)
    shipped_version = live.info.version
    scans = generate(tmp_path / "scans", pages=2, seed=3, kind="form", style="clean", data_dir=data_dir)
    process_batch([scans[0]], settings, predictor=live)  # registers the shipped model as active
    from digitreader.pipeline import split

    # String fields were split with the splitter's own model (DIGITREADER_SPLITTER=shipped).
    assert split._scorer_cache.get(str(split.SPLITTER_MODEL)) is not None
    with session_scope(settings) as s:
        active = registry.active_model(s)
        assert active is not None and active.version == shipped_version
        cand = registry.register_model(s, settings, _copy_with_version(shipped, tmp_path / "c.onnx", "cand-1"))
        assert cand.path is not None
        assert cand.status == "candidate" and Path(cand.path).parent == settings.home / "models"
        with pytest.raises(UsageError):  # same version, other content
            registry.register_model(s, settings, _copy_with_version(shipped, tmp_path / "d.onnx", shipped_version))
    # Same weights, no corrections: the gate refuses.
    res = registry.promote(settings, "cand-1")
    assert not res["promoted"] and any("no corrected digits" in r for r in res["reasons"])
    assert res["candidate"]["mnist_test_accuracy"] == res["active"]["mnist_test_accuracy"]
    assert live.refresh() is False
    # A person overrides it; the running pipeline picks the new model up without a restart.
    res = registry.promote(settings, "cand-1", force=True)
    assert res["promoted"] and res["forced"]
    assert live.refresh() is True and live.info.version == "cand-1"
    # With DIGITREADER_SPLITTER=reader, the string splitter takes its second opinion from the model
    # that reads, the promoted one now, not the shipped one.
    report = process_batch([scans[1]], settings.model_copy(update={"splitter": "reader"}), predictor=live)
    assert registry.active_model_file(settings, max_age=0) == live.info.path != str(shipped)
    assert split._scorer_cache.get(live.info.path) is not None
    with session_scope(settings) as s:
        versions = set(s.scalars(select(Digit.model_version).where(Digit.blank.is_(False))).all())
        assert versions == {shipped_version, "cand-1"}  # each digit records the model that read it
        gate = s.scalars(select(ModelVersion).where(ModelVersion.version == "cand-1")).one().gate
        assert gate is not None and gate["forced"]
    assert report.model_version == shipped_version or report.model_version == "cand-1"
    # Rollback: the shipped model is live again, picked up as well.
    assert registry.rollback(settings) == {"retired": "cand-1", "active": shipped_version}
    assert live.refresh() is True and live.info.version == shipped_version
    with pytest.raises(NotFoundError):
        registry.rollback(settings)
    # The CLI: a refused promotion exits 3; nothing to roll back to exits 10.
    dispose_engines()
    monkeypatch.setenv("DIGITREADER_HOME", str(settings.home))
    monkeypatch.setenv("DIGITREADER_DATA_DIR", str(data_dir))
    monkeypatch.delenv("DIGITREADER_DATABASE_URL", raising=False)
    from digitreader.settings import get_settings

    get_settings.cache_clear()
    try:
        code, out, err = _cli(["models", "promote", "cand-1"], capsys)
        assert code == ExitCode.PARTIAL and "NOT promoted" in err and '"promoted": false' in out
        assert _cli(["models", "rollback"], capsys)[0] == ExitCode.NOT_FOUND
        assert _cli(["models", "promote", "no-such"], capsys)[0] == ExitCode.NOT_FOUND
    finally:
        get_settings.cache_clear()


def test_stale_weights_are_refused(tmp_path: Path) -> None:
    """Weights tied to another ONNX file are never fine-tuned from (the shipped model was replaced)."""
    pytest.importorskip("torch")
    from training import archs
    from training.corrections import base_weights, save_weights

    settings = Settings(home=tmp_path / "home", _env_file=None)  # type: ignore[call-arg]
    shipped = MODELS_DIR / read_manifest()["model"]
    with session_scope(settings) as s:
        mv = registry.register_model(s, settings, shipped, status="active")
    assert mv.path is not None
    model = archs.build("drnet", 11)
    beside = Path(mv.path).with_suffix(".pt")
    save_weights(model, "drnet", beside, "old", "0" * 64)
    with pytest.raises(UsageError):
        base_weights(settings, None)
    save_weights(model, "drnet", beside, "new", mv.sha256)
    assert base_weights(settings, None) == (beside, mv.version)
    dispose_engines()
