"""Shared fixtures. Real files, real services: no mocks of the database, Redis or Celery."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from digitreader.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
TEST_DATA = Path(__file__).resolve().parent / "data"


def _find_data_dir() -> Path | None:
    env = os.environ.get("DIGITREADER_DATA_DIR")
    for cand in [env, ROOT.parent / "shared" / "datasets"]:
        if cand and (Path(cand) / "mnist" / "t10k-images-idx3-ubyte.gz").exists():
            return Path(cand)
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Folder holding mnist/ (../shared/datasets on this machine and on CI)."""
    d = _find_data_dir()
    if d is None:
        if os.environ.get("CI"):
            pytest.fail("MNIST data not found: set DIGITREADER_DATA_DIR (CI must have ../shared/datasets)")
        pytest.skip("MNIST data not found (set DIGITREADER_DATA_DIR)")
    return d


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    """Settings isolated in a temporary home (SQLite database inside it)."""
    return Settings(home=tmp_path / "home", data_dir=_find_data_dir(), _env_file=None)  # type: ignore[call-arg]


@pytest.fixture()
def home(batch: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """DIGITREADER_HOME at the requesting module's `batch` (its home folder, its batch id: a module-scoped
    fixture that submitted something there), with no other database, broker or precision set."""
    from digitreader.settings import get_settings

    monkeypatch.setenv("DIGITREADER_HOME", str(batch[0]))
    for name in ("DIGITREADER_DATABASE_URL", "DIGITREADER_BROKER_URL", "DIGITREADER_PRECISION"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield batch[0]
    get_settings.cache_clear()


@pytest.fixture()
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point every DIGITREADER_* setting that holds state at a temporary folder (for CLI tests)."""
    home = tmp_path / "home"
    monkeypatch.setenv("DIGITREADER_HOME", str(home))
    monkeypatch.delenv("DIGITREADER_DATABASE_URL", raising=False)
    monkeypatch.delenv("DIGITREADER_BROKER_URL", raising=False)
    monkeypatch.delenv("DIGITREADER_PRECISION", raising=False)
    from digitreader.settings import get_settings

    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()


@pytest.fixture(autouse=True)
def _no_pool_left_running() -> Iterator[None]:
    """Every process pool a test starts is shut down by its end. A pool left running (its manager
    thread alive) is joined by Python at exit, and one whose process is stuck hangs the whole run
    there after every test passed (CI timed out so once)."""
    import concurrent.futures.process as cfp
    import signal
    import threading

    before = {t for t in list(cfp._threads_wakeups) if t.is_alive()}
    sigterm = signal.getsignal(signal.SIGTERM)
    yield
    left = []
    for t in list(cfp._threads_wakeups):
        if t not in before and t.is_alive():
            t.join(timeout=5.0)
            if t.is_alive():
                left.append(t)
    assert not left, f"process pools left running: {left}"
    if threading.current_thread() is threading.main_thread():
        now = signal.getsignal(signal.SIGTERM)
        assert now == sigterm, f"SIGTERM handler left installed: {now!r} (was {sigterm!r})"
