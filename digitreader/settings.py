"""The one settings object. Every knob is a `DIGITREADER_*` environment variable (or a `.env` line).

Nothing else in the code reads `os.environ` for configuration: take a `Settings` and pass it down.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_home() -> Path:
    # Per-user data directory (XDG on Linux), like other well-behaved tools.
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "digitreader"


class Settings(BaseSettings):
    """Configuration for every part of digitreader; each field is `DIGITREADER_<NAME>`."""

    # env_ignore_empty: `DIGITREADER_MODEL_PATH=` (a compose file's or .env's empty line) means the
    # default, not an empty path. allow_inf_nan=False: `DOCUMENT_TIME_LIMIT=inf`, `THRESHOLD=nan`
    # are refused with the others (an infinite time limit overflowed the timer on every document).
    model_config = SettingsConfigDict(
        env_prefix="DIGITREADER_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        env_ignore_empty=True,
        allow_inf_nan=False,
    )

    # Where state lives.
    home: Path = Field(default_factory=_default_home, description="Per-user data directory (SQLite file, models).")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default sqlite:///<home>/digitreader.sqlite."
    )
    broker_url: str | None = Field(
        default=None, description="Celery broker (e.g. redis://127.0.0.1:6379/0); set = distributed mode."
    )
    result_backend: str | None = Field(default=None, description="Celery result backend (default: none needed).")

    # Data for training and evaluation.
    data_dir: Path | None = Field(
        default=None, description="Folder holding mnist/ (the four IDX gzip files); e.g. ../shared/datasets."
    )

    # Model and recognition.
    model_path: Path | None = Field(default=None, description="ONNX model to use instead of the active one.")
    threshold: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Review threshold on calibrated confidence (default: model's)."
    )
    splitter: str = Field(
        default="shipped",
        description="Model whose second opinion splits string fields into digits: shipped (its own, "
        "digitreader/models/splitter/), reader (the model reading the digits) or an ONNX file's path.",
    )
    providers: str = Field(default="auto", description="onnxruntime providers: auto, cpu or cuda.")
    precision: str = Field(
        default="auto",
        description="Model precision: auto (int8 on the CPU where the model has an int8 file, fp32 on CUDA), "
        "fp32 or int8.",
    )
    intra_op_threads: int = Field(default=1, ge=0, description="onnxruntime threads per session (0 = all cores).")
    batch_size: int = Field(default=1024, ge=1, description="Digits per inference batch.")

    # Loading and segmentation.
    pdf_dpi: int = Field(default=300, ge=50, le=1200, description="Rasterization dpi for PDF pages.")
    max_page_pixels: int = Field(
        default=120_000_000, ge=1, description="Refuse pages larger than this many pixels (decompression bombs)."
    )
    max_file_bytes: int = Field(default=500_000_000, ge=1, description="Refuse input files larger than this.")
    rotate_pages: bool = Field(
        default=True,
        description="Read a page scanned upside down or sideways turned upright, where its digits say so "
        "(pipeline/orient.py); false: read every page as it lies.",
    )

    # Work.
    workers: int = Field(default=0, ge=0, description="Processes for segmentation (0 = one per core).")
    settle_seconds: float = Field(
        default=0.0,
        ge=0,
        description="submit leaves out files modified less than this many seconds ago (a scanner still "
        "writing them into a hot folder); the next run reads them. 0: read every file.",
    )
    document_time_limit: float = Field(
        default=300.0, gt=0, description="Seconds one document (embedded: each part of a long one) may take."
    )
    part_pages: int = Field(
        default=4,
        ge=0,
        description="A PDF or TIFF longer than this many pages is segmented in parts of about as many pages, "
        "on several cores (embedded) or page workers (distributed) at once; 0: never.",
    )
    max_redeliveries: int = Field(default=3, ge=1, description="Distributed: deliveries before a document fails.")
    # Tests only: a page worker exits hard (os._exit) on documents whose file name matches this
    # glob, to prove the redelivery cap. Never set it in production. Prefixed "sending:", an embedded
    # pool process dies halfway through sending its result back instead.
    test_crash_on: str | None = Field(
        default=None, description="TESTS ONLY: a page worker (or embedded pool process) crashes on matching names."
    )

    # Review page.
    review_token: str | None = Field(default=None, description="Token required when review binds off loopback.")
    reviewer: str | None = Field(default=None, description="Name stored with corrections (default: $USER).")

    @field_validator("broker_url")
    @classmethod
    def _redis_url(cls, url: str | None) -> str | None:
        """The distributed mode's broker is Redis: `redis://[:password@]host[:port][/db]` (or rediss://,
        unix://). Checked here, so that a malformed URL is a bad setting (exit 2) before anything is
        registered, not an internal error once the batch exists."""
        if url is None:
            return None
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError("the distributed mode needs a Redis broker: redis://host:6379/0")
        try:
            parts.port  # noqa: B018  (raises ValueError for a port that is not a number)
        except ValueError as exc:
            raise ValueError("the port is not a number") from exc
        db = parts.path.strip("/") if parts.scheme != "unix" else ""
        if db and not db.isdigit():
            raise ValueError(f"the database number {db!r} is not a number (redis://host:6379/0)")
        return url

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home / 'digitreader.sqlite'}"

    @property
    def distributed(self) -> bool:
        return bool(self.broker_url)


#: Settings whose values may hold a password or are one: never printed whole.
SECRET = frozenset({"broker_url", "result_backend", "database_url", "review_token"})


def _redacted(field: str, value: object) -> object:
    """`value` as an error may show it: a URL's password replaced by ***, a token by ***."""
    if field not in SECRET or not isinstance(value, str):
        return value
    if field == "review_token":
        return "***"
    import re

    return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", value)


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once). Tests build their own `Settings(...)` instead.

    Raises UsageError (exit 2) naming each `DIGITREADER_*` value that is not valid, or a `.env` file
    that cannot be read, instead of a validation traceback."""
    from pydantic import ValidationError

    from digitreader.errors import UsageError

    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            field = "_".join(str(part) for part in e["loc"])
            shown = _redacted(field, e.get("input"))
            problems.append(f"DIGITREADER_{field.upper()}={shown!r}: {e['msg']}")
        raise UsageError(
            "bad setting" + ("s" if len(problems) > 1 else "") + ": " + "; ".join(problems),
            hint="fix or unset it (in the environment or .env); the README's Settings table lists each one",
        ) from exc
    except UnicodeDecodeError as exc:
        raise UsageError(f"cannot read the settings file .env: it is not UTF-8 ({exc.reason})") from exc
