"""The model registry: which recognition models exist, how good they are, which one is live.

Each model (table `model_versions` + its ONNX file under `settings.home/models/`) has a version, a
SHA-256, metrics on the frozen evaluation set and a status: `candidate`, `active` (exactly one) or
`retired`. The first model the pipeline uses (the shipped one) registers itself as active.

**Frozen evaluation set** = the MNIST test set + the corrected digits whose crop hashes into the
frozen share (`FROZEN_SHARE`, 20 %). The split is a pure function of the crop's bytes, so a digit
never changes side as corrections grow, retraining never sees a frozen digit, and the same crop
submitted twice (e.g. `submit --force`) lands on the same side (no leak between the two).

**Promotion gate** (`promote`): the candidate and the active model are both evaluated *now*, on
the same frozen set; the candidate goes live only if it is better on the corrected-digit part and
loses at most `MNIST_TOLERANCE_POINTS` (0.05 percentage points) on MNIST test. `force=True`
overrides the gate (recorded). `rollback` reactivates the model that was live before.

**Pick-up without restart**: `LivePredictor` (what `process.load_predictor` returns) checks the
active model's SHA-256 in the database before each batch of documents (`refresh()`), and swaps
in the new model when it changed. Each stored digit records the version that read it.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from digitreader.db import session_scope
from digitreader.db.models import Correction, Digit, ModelVersion, iso_utc, utcnow
from digitreader.errors import DatasetError, DigitreaderError, ModelError, NotFoundError, UsageError
from digitreader.hashing import sha256_file
from digitreader.pipeline.recognize import int8_path, onnx_metadata
from digitreader.settings import Settings
from digitreader.types import NON_DIGIT

log = logging.getLogger(__name__)

FROZEN_SHARE = 0.2
FROZEN_SALT = b"digitreader-frozen-v1:"
MNIST_TOLERANCE_POINTS = 0.05  # percentage points of MNIST test accuracy a candidate may lose


# ------------------------------------------------------------------------------ frozen set


def crop_key(crop: bytes) -> str:
    """The identity of a corrected digit for the frozen split: SHA-256 of its 28x28 crop bytes."""
    return hashlib.sha256(bytes(crop)).hexdigest()


def is_frozen(crop: bytes, share: float = FROZEN_SHARE) -> bool:
    """True when this crop belongs to the frozen evaluation set (deterministic, never changes)."""
    h = hashlib.sha256(FROZEN_SALT + bytes(crop)).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64 < share


@dataclass(frozen=True)
class CorrectedDigits:
    """Every corrected digit: its latest correction is the truth. Label 10 = not a digit / blank."""

    digit_ids: np.ndarray  # (N,) int64
    images: np.ndarray  # (N, 28, 28) uint8, ink high
    labels: np.ndarray  # (N,) int64, 0-9 or 10
    frozen: np.ndarray  # (N,) bool: in the frozen evaluation set (never trained on)
    model_versions: tuple[str | None, ...]  # the version that read each digit

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def part(self, frozen: bool) -> tuple[np.ndarray, np.ndarray]:
        m = self.frozen if frozen else ~self.frozen
        return self.images[m], self.labels[m]

    def fingerprint(self, frozen: bool = True) -> str:
        """SHA-256 over the (sorted) crops and labels of one part: names the set metrics were taken on."""
        images, labels = self.part(frozen)
        keys = sorted(crop_key(img.tobytes()) + str(int(lab)) for img, lab in zip(images, labels, strict=True))
        return hashlib.sha256("\n".join(keys).encode()).hexdigest()


def corrected_digits(session: Session, share: float = FROZEN_SHARE) -> CorrectedDigits:
    """Load every digit that has a correction (with its crop), labelled by its latest correction.

    A crop corrected in several documents appears once (its latest correction wins), so duplicates
    neither inflate the training weight nor the frozen set.
    """
    latest = select(Correction.digit_id, func.max(Correction.id).label("cid")).group_by(Correction.digit_id).subquery()
    rows = session.execute(
        select(Digit.id, Digit.crop, Digit.model_version, Correction.new_label, Correction.id)
        .join(latest, latest.c.digit_id == Digit.id)
        .join(Correction, Correction.id == latest.c.cid)
        .where(Digit.crop.is_not(None))
        .order_by(Correction.id)
    ).all()
    by_crop: dict[bytes, tuple[int, bytes, str | None, int]] = {}
    for did, crop, version, new_label, _cid in rows:
        if crop is None or len(crop) != 784:
            continue
        by_crop[bytes(crop)] = (int(did), bytes(crop), version, NON_DIGIT if new_label is None else int(new_label))
    items = sorted(by_crop.values(), key=lambda r: r[0])
    if not items:
        return CorrectedDigits(np.zeros(0, np.int64), np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int64),
                               np.zeros(0, bool), ())  # fmt: skip
    return CorrectedDigits(
        digit_ids=np.array([r[0] for r in items], np.int64),
        images=np.stack([np.frombuffer(r[1], np.uint8).reshape(28, 28) for r in items]),
        labels=np.array([r[3] for r in items], np.int64),
        frozen=np.array([is_frozen(r[1], share) for r in items], bool),
        model_versions=tuple(r[2] for r in items),
    )


_mnist_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def mnist_test(settings: Settings) -> tuple[np.ndarray, np.ndarray]:
    """MNIST test images and labels from settings.data_dir (read once per process)."""
    from digitreader.synth.mnist import TEST_IMAGES, TEST_LABELS, read_idx

    if settings.data_dir is None:
        raise DatasetError("evaluation needs MNIST test", hint="set DIGITREADER_DATA_DIR to the folder holding mnist/")
    base = Path(settings.data_dir)
    folder = base / "mnist" if (base / "mnist").is_dir() else base
    key = str(folder.resolve())
    if key not in _mnist_cache:
        _mnist_cache[key] = (read_idx(folder / TEST_IMAGES), read_idx(folder / TEST_LABELS).astype(np.int64))
    return _mnist_cache[key]


def evaluate_model(path: str | Path, settings: Settings, corrected: CorrectedDigits) -> dict[str, Any]:
    """Metrics of one ONNX model on the frozen set: MNIST test and the frozen corrected digits."""
    from digitreader.pipeline.recognize import Predictor

    # The model's own (fp32) file, whatever this machine reads with: the gate compares models, not
    # precisions (an int8 file is kept only when it reads like its model: training.quantize).
    pred = Predictor.load(Path(path), settings=settings.model_copy(update={"precision": "fp32"}))
    x, y = mnist_test(settings)
    mnist_acc = float((pred.predict(x).labels == y).mean())
    fx, fy = corrected.part(frozen=True)
    corr_acc = float((pred.predict(fx).labels == fy).mean()) if len(fy) else None
    return {
        "mnist_test_accuracy": mnist_acc,
        "mnist_test_n": int(len(y)),
        "corrected_accuracy": corr_acc,
        "corrected_n": int(len(fy)),
        "corrected_fingerprint": corrected.fingerprint(frozen=True),
        "evaluated_at": utcnow().isoformat(),
    }


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reasons: tuple[str, ...]
    candidate: dict[str, Any]
    active: dict[str, Any] | None

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": list(self.reasons), "candidate": self.candidate,
                "active": self.active}  # fmt: skip


def gate(candidate: dict[str, Any], active: dict[str, Any] | None) -> GateDecision:
    """The promotion rule on metrics taken on the same frozen set (see the module docstring)."""
    reasons: list[str] = []
    ok = True
    if active is None:
        return GateDecision(True, ("no active model",), candidate, None)
    c_corr, a_corr = candidate.get("corrected_accuracy"), active.get("corrected_accuracy")
    if not candidate.get("corrected_n"):
        ok = False
        reasons.append("the frozen set has no corrected digits yet: nothing shows the candidate is better")
    elif c_corr is None or a_corr is None or c_corr <= a_corr:
        ok = False
        reasons.append(f"corrected digits: {_pct(c_corr)} is not better than the active model's {_pct(a_corr)}")
    else:
        reasons.append(f"corrected digits: {_pct(c_corr)} > {_pct(a_corr)}")
    drop = 100.0 * (float(active["mnist_test_accuracy"]) - float(candidate["mnist_test_accuracy"]))
    if drop > MNIST_TOLERANCE_POINTS + 1e-9:
        ok = False
        reasons.append(f"MNIST test: loses {drop:.2f} points (at most {MNIST_TOLERANCE_POINTS} allowed)")
    else:
        reasons.append(f"MNIST test: {_pct(candidate['mnist_test_accuracy'])} vs "
                       f"{_pct(active['mnist_test_accuracy'])} (change {-drop:+.2f} points)")  # fmt: skip
    return GateDecision(ok, tuple(reasons), candidate, active)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * float(v):.2f} %"


# -------------------------------------------------------------------------------- registry


def models_home(settings: Settings) -> Path:
    return settings.home / "models"


file_sha256 = sha256_file


def get_model(session: Session, version: str) -> ModelVersion:
    mv = session.scalars(select(ModelVersion).where(ModelVersion.version == version)).first()
    if mv is None:
        raise NotFoundError(f"no model with version {version!r} in the registry", hint="digitreader models list")
    return mv


def active_model(session: Session) -> ModelVersion | None:
    return session.scalars(
        select(ModelVersion).where(ModelVersion.status == "active").order_by(ModelVersion.id.desc()).limit(1)
    ).first()


_active_files: dict[str, tuple[float, str | None]] = {}


def active_model_file(settings: Settings, max_age: float = 30.0) -> str | None:
    """The file of the model the recognizer uses (DIGITREADER_MODEL_PATH, else the registry's active
    model), for the string splitter of a page worker in another process; looked up at most every
    `max_age` seconds per process. None (the shipped model) when none is active, its file is not on
    this host, or the database cannot be read."""
    if settings.model_path is not None:
        return str(settings.model_path)
    key = settings.resolved_database_url
    now = time.monotonic()
    hit = _active_files.get(key)
    if hit is not None and now - hit[0] < max_age:
        return hit[1]
    path: str | None = None
    try:
        file, _ = active_entry(settings)
        path = str(file) if file is not None and file.is_file() else None
    except Exception as exc:  # the splitter falls back to the shipped model; reading goes on
        log.warning("model registry unavailable for the string splitter: %s", exc)
    _active_files[key] = (now, path)
    return path


def active_entry(settings: Settings) -> tuple[Path | None, str | None]:
    """(file, SHA-256) of the registry's active model; (None, None) when none is active or there is
    no database yet (then nothing is created). Database errors are raised."""
    if _sqlite_missing(settings):
        return None, None
    with session_scope(settings) as s:
        mv = active_model(s)
        if mv is None or not mv.path:
            return None, None
        return Path(mv.path), mv.sha256


def register_model(
    session: Session,
    settings: Settings,
    onnx_path: str | Path,
    *,
    parent: str | None = None,
    metrics: dict[str, Any] | None = None,
    weights: str | Path | None = None,
    status: str = "candidate",
) -> ModelVersion:
    """Copy an ONNX model (and its PyTorch weights, for later fine-tuning) under settings.home/models/
    and register it. Its version comes from the model's metadata. Raises UsageError when that version
    is registered already with other content."""
    src = Path(onnx_path)
    if not src.is_file():
        raise ModelError(f"model file not found: {src}", code="missing")
    meta = onnx_metadata(src)
    version = meta.get("version") or src.stem
    digest = file_sha256(src)
    existing = session.scalars(select(ModelVersion).where(ModelVersion.version == version)).first()
    if existing is not None:
        if existing.sha256 != digest:
            raise UsageError(f"model version {version!r} is registered already with another file",
                             hint="export the model with a new --model-version")  # fmt: skip
        return existing
    dest_dir = models_home(settings)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / f"{_safe(version)}-{digest[:12]}.onnx"
    if not dest.exists():
        tmp = dest.with_suffix(".tmp")
        shutil.copyfile(src, tmp)
        tmp.replace(dest)
    if weights is not None and Path(weights).is_file():
        shutil.copyfile(weights, dest.with_suffix(".pt"))
    q = int8_path(src)  # its int8 file (training.quantize), if any: CPUs read with it
    if q.is_file() and not int8_path(dest).exists():
        shutil.copyfile(q, int8_path(dest))
    try:
        threshold = float(meta["threshold"])
    except (KeyError, ValueError):
        threshold = None
    if status == "active" and active_model(session) is not None:
        raise UsageError("register as candidate, then promote (the gate decides)")
    mv = ModelVersion(version=version, sha256=digest, path=str(dest), threshold=threshold, metrics=metrics,
                      status=status, parent_version=parent, created_at=utcnow(),
                      promoted_at=utcnow() if status == "active" else None)  # fmt: skip
    session.add(mv)
    session.flush()
    log.info("registered model %s (%s) as %s", version, digest[:12], status)
    return mv


def _safe(version: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in version)[:64] or "model"


def weights_for(mv: ModelVersion | None) -> Path | None:
    """The PyTorch weights kept beside a registered model (for fine-tuning), if any."""
    if mv is None or not mv.path:
        return None
    p = Path(mv.path).with_suffix(".pt")
    return p if p.is_file() else None


def promote(settings: Settings, version: str, *, force: bool = False) -> dict[str, Any]:
    """Evaluate candidate and active model on today's frozen set; make the candidate active if it
    passes the gate (or `force`). Returns the decision (also stored on the candidate as `gate`)."""
    with session_scope(settings) as s:
        cand = get_model(s, version)
        if cand.status == "active":
            raise UsageError(f"model {version} is already active")
        cur = active_model(s)
        corrected = corrected_digits(s)
        cand_path, cur_path = _model_file(cand), _model_file(cur) if cur is not None else None
    cand_metrics = evaluate_model(cand_path, settings, corrected)
    cur_metrics = evaluate_model(cur_path, settings, corrected) if cur_path is not None else None
    decision = gate(cand_metrics, cur_metrics)
    promoted = decision.passed or force
    with session_scope(settings) as s:
        cand = get_model(s, version)
        cand.metrics = cand_metrics
        cand.gate = {**decision.as_dict(), "forced": force and not decision.passed, "at": utcnow().isoformat()}
        if cur is not None:
            cur_row = get_model(s, cur.version)
            cur_row.metrics = cur_metrics
        if promoted:
            _activate(s, cand)
    log.info("promotion of %s: %s", version, "done" if promoted else "refused")
    return {"version": version, "promoted": promoted, "forced": force and not decision.passed,
            "previous": cur.version if cur is not None else None, **decision.as_dict()}  # fmt: skip


def _model_file(mv: ModelVersion) -> Path:
    if not mv.path:
        raise ModelError(f"model {mv.version} has no file path in the registry", code="missing")
    p = Path(mv.path)
    if not p.is_file():
        raise ModelError(f"model {mv.version}: file {p} not found", code="missing",
                         hint="registry files live in DIGITREADER_HOME/models (share it with workers)")  # fmt: skip
    return p


def _activate(s: Session, mv: ModelVersion) -> None:
    for other in s.scalars(select(ModelVersion).where(ModelVersion.status == "active")):
        if other.id != mv.id:
            other.status = "retired"
    mv.status = "active"
    mv.promoted_at = utcnow()
    s.flush()


def rollback(settings: Settings) -> dict[str, Any]:
    """Retire the active model and reactivate the one that was live before it."""
    with session_scope(settings) as s:
        cur = active_model(s)
        if cur is None:
            raise NotFoundError("no active model in the registry")
        if cur.promoted_at is None:  # the first model (registered active, never promoted): nothing before it
            raise NotFoundError(f"nothing to roll back to: {cur.version} was the first model live")
        stmt = select(ModelVersion).where(
            ModelVersion.status == "retired",
            ModelVersion.id != cur.id,
            (ModelVersion.promoted_at.is_(None)) | (ModelVersion.promoted_at < cur.promoted_at),
        )
        # Retired models were live once; the one promoted last before the current one wins (the
        # first model, never promoted, counts as the oldest).
        prev = None
        for mv in s.scalars(stmt):
            key = (mv.promoted_at is not None, mv.promoted_at or mv.created_at)
            if prev is None or key > (prev.promoted_at is not None, prev.promoted_at or prev.created_at):
                prev = mv
        if prev is None:
            raise NotFoundError(f"nothing to roll back to: {cur.version} is the only model that was live")
        cur.status = "retired"
        prev.status = "active"
        s.flush()
        log.info("rolled back from %s to %s", cur.version, prev.version)
        return {"retired": cur.version, "active": prev.version}


def list_models(session: Session) -> list[dict[str, Any]]:
    return [
        {"version": m.version, "status": m.status, "sha256": m.sha256, "path": m.path, "parent": m.parent_version,
         "metrics": m.metrics, "promoted_at": iso_utc(m.promoted_at),
         "created_at": iso_utc(m.created_at), "gate": m.gate}
        for m in session.scalars(select(ModelVersion).order_by(ModelVersion.id))
    ]  # fmt: skip


def _onnx_meta_or_error(path: Path) -> dict[str, str]:
    try:
        return onnx_metadata(path)
    except Exception as exc:  # a broken file is listed with its error, not fatal
        log.debug("cannot read %s: %s", path, exc)
        return {"error": str(exc.__cause__ or exc).splitlines()[0][:200]}


def installed_models(settings: Settings) -> list[dict[str, Any]]:
    """Every model file we know of (`digitreader models list`): the shipped ones, DIGITREADER_MODEL_PATH
    and those only in the database, with metadata and where each comes from; `active` marks the one
    `submit` uses (DIGITREADER_MODEL_PATH, else the manifest's)."""
    from digitreader.pipeline.recognize import MODELS_DIR, read_manifest

    try:
        manifest = read_manifest()
    except ModelError as exc:  # listed all the same: each file says what is wrong with it
        log.warning("%s", exc)
        manifest = {}
    # A model's int8 file (`training.quantize`) is the same model in another precision: listed with it.
    files = sorted(f for f in MODELS_DIR.glob("*.onnx") if not f.name.endswith(".int8.onnx"))
    if settings.model_path is not None and Path(settings.model_path).expanduser() not in files:
        files.append(Path(settings.model_path).expanduser())
    active_path = (
        Path(settings.model_path).expanduser()
        if settings.model_path
        else (MODELS_DIR / manifest["model"] if manifest.get("model") else None)
    )
    registered: dict[str, ModelVersion] = {}
    try:
        with session_scope(settings) as s:
            registered = {m.version: m for m in s.scalars(select(ModelVersion)).all()}
    except DigitreaderError as exc:
        log.warning("model registry unavailable: %s", exc)
    out: list[dict[str, Any]] = []
    for f in files:
        exists = f.is_file()
        meta = _onnx_meta_or_error(f) if exists else {"error": "not a file" if f.exists() else "file not found"}
        version = meta.get("version", f.stem)
        reg = registered.pop(version, None)
        digest = sha256_file(f) if exists else None
        out.append(
            {
                "version": version,
                "path": str(f),
                "active": active_path is not None and f == active_path,
                "source": "DIGITREADER_MODEL_PATH"
                if settings.model_path and f == Path(settings.model_path).expanduser()
                else "shipped",
                "sha256": digest,
                "sha256_ok": None
                if f.name != manifest.get("model")
                else (digest == str(manifest.get("sha256", "")).lower()),
                "threshold": _num(meta.get("threshold")),
                "temperature": _num(meta.get("temperature")),
                "mnist_test_accuracy": _num(meta.get("mnist_test_accuracy")),
                "arch": meta.get("arch"),
                "int8": str(int8_path(f)) if int8_path(f).is_file() else None,
                "registry_status": reg.status if reg else None,
                "error": meta.get("error"),
            }
        )
    for version, reg in registered.items():  # in the database only (e.g. retrained candidates elsewhere)
        out.append(
            {
                "version": version,
                "path": reg.path,
                "active": False,
                "source": "database",
                "sha256": reg.sha256,
                "sha256_ok": None,
                "threshold": reg.threshold,
                "temperature": None,
                "mnist_test_accuracy": (reg.metrics or {}).get("mnist_test_accuracy"),
                "arch": None,
                "int8": str(int8_path(Path(reg.path))) if reg.path and int8_path(Path(reg.path)).is_file() else None,
                "registry_status": reg.status,
                "error": None,
            }
        )
    return out


def _num(v: str | None) -> float | None:
    try:
        return None if v is None else float(v)
    except ValueError:
        return None


# ----------------------------------------------------------------------- live pick-up


def _sqlite_missing(settings: Settings) -> bool:
    from sqlalchemy.engine import make_url

    url = make_url(settings.resolved_database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return False
    return not Path(url.database).expanduser().exists()


class LivePredictor:
    """A `Predictor` that follows the registry's active model (pick-up without restart).

    `refresh()` (called by the pipeline before each batch of documents, and by workers before
    each task) reads the active model's SHA-256 from the database and loads the new model when it
    changed; at most once per `check_every` seconds. With no active model registered (or no
    database yet) it uses the shipped model. `predict`/`logits`/`info` act on the current model.
    """

    def __init__(self, settings: Settings, check_every: float = 0.0) -> None:
        self.settings = settings
        self.check_every = check_every
        self._lock = threading.Lock()
        self._current: Any = None
        self._sha: str | None = None
        self._shipped = False
        self._checked = 0.0
        self.refresh(force=True)

    def _wanted(self) -> tuple[Path | None, str | None]:
        try:
            return active_entry(self.settings)  # (None, None): the shipped model
        except Exception as exc:  # the database is down: keep reading with the model we have
            if self._current is None:
                raise
            log.warning("model registry unavailable, keeping %s: %s", self._sha, exc)
            return Path(self._current.info.path), self._sha

    def refresh(self, force: bool = False) -> bool:
        """Load the active model if it changed. Returns True when the model was swapped."""
        from digitreader.pipeline.recognize import Predictor

        now = time.monotonic()
        if not force and now - self._checked < self.check_every:
            return False
        with self._lock:
            self._checked = now
            path, sha = self._wanted()
            if self._current is not None and sha is not None and sha == self._sha:
                return False
            if path is None:
                if self._current is not None and self._shipped:
                    return False
                new = Predictor.load(None, settings=self.settings)
                sha = new.info.sha256
            else:
                if not path.is_file():
                    raise ModelError(f"the active model's file {path} is missing", code="missing",
                                     hint="the registry's files live under DIGITREADER_HOME/models")  # fmt: skip
                new = Predictor.load(path, settings=self.settings)
                if new.info.sha256 != sha:
                    raise ModelError(f"{path}: SHA-256 {new.info.sha256[:16]}... does not match the registry's "
                                     f"{str(sha)[:16]}...", code="checksum")  # fmt: skip
            changed = self._current is not None
            if changed:
                log.info("model changed: %s -> %s", self._current.info.version, new.info.version)
            self._current, self._sha, self._shipped = new, sha, path is None
            return changed

    @property
    def info(self) -> Any:
        return self._current.info

    @property
    def threshold(self) -> float:
        return float(self._current.threshold)

    def predict(self, crops: np.ndarray) -> Any:
        return self._current.predict(crops)

    def logits(self, crops: np.ndarray) -> np.ndarray:
        return np.asarray(self._current.logits(crops))
