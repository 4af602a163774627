"""`digitreader models list|show`: the installed recognition models and which one is active."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from digitreader.cli.output import err, print_json
from digitreader.errors import DigitreaderError, NotFoundError
from digitreader.settings import Settings, get_settings

if TYPE_CHECKING:
    from digitreader.db import ModelVersion

log = logging.getLogger(__name__)

models_app = typer.Typer(
    name="models",
    help=(
        "The recognition models: those shipped in digitreader/models/ (manifest.json names the "
        "default), DIGITREADER_MODEL_PATH, and those registered in the database.\n\n"
        "  digitreader models list\n\n  digitreader models show"
    ),
    no_args_is_help=True,
)


def _onnx_meta(path: Path) -> dict[str, str]:
    from digitreader.pipeline.recognize import onnx_metadata

    try:
        return onnx_metadata(path)
    except Exception as exc:  # a broken file is listed with its error, not fatal
        log.debug("cannot read %s: %s", path, exc)
        return {"error": str(exc.__cause__ or exc).splitlines()[0][:200]}


def installed_models(settings: Settings) -> list[dict[str, Any]]:
    """Every model file we know of, with its metadata and where it comes from; `active` marks the
    one `submit` uses (DIGITREADER_MODEL_PATH, else the manifest's)."""
    from digitreader.pipeline.recognize import MANIFEST, MODELS_DIR, _sha256, int8_path

    manifest: dict[str, Any] = {}
    if MANIFEST.exists():
        try:
            manifest = json.loads(MANIFEST.read_text())
        except ValueError:
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
    from sqlalchemy import select

    from digitreader.db import ModelVersion, session_scope

    registered: dict[str, ModelVersion] = {}
    try:
        with session_scope(settings) as s:
            registered = {m.version: m for m in s.scalars(select(ModelVersion)).all()}
    except DigitreaderError as exc:
        log.warning("model registry unavailable: %s", exc)
    out: list[dict[str, Any]] = []
    for f in files:
        exists = f.exists()
        meta = _onnx_meta(f) if exists else {"error": "file not found"}
        version = meta.get("version", f.stem)
        reg = registered.pop(version, None)
        digest = _sha256(f) if exists else None
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


@models_app.command("list")
def list_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List the models; '*' marks the active one (the one `submit` uses).

    Example:  digitreader models list --json
    """
    models = installed_models(get_settings())
    if as_json:
        print_json(models)
        return
    if not models:
        err.print("no models installed (digitreader/models/ is empty); train one: digitreader train")
        return
    for m in models:
        acc = f"{100 * m['mnist_test_accuracy']:.2f} %" if m["mnist_test_accuracy"] else "-"
        thr = f"{m['threshold']:.3f}" if m["threshold"] is not None else "-"
        flag = "*" if m["active"] else " "
        precisions = "fp32+int8" if m.get("int8") else "fp32"
        extra = f"  ERROR: {m['error']}" if m["error"] else ""
        if m["sha256_ok"] is False:
            extra += "  SHA-256 MISMATCH"
        typer.echo(
            f"{flag} {m['version']:<28} mnist {acc:>8}  threshold {thr:>5}  {precisions:<9} "
            f"{m['registry_status'] or '-':<9} {m['path']}{extra}"
        )


@models_app.command("show")
def show_cmd(
    version: str | None = typer.Argument(None, help="Model version (default: the active model)."),
) -> None:
    """Show one model's details as JSON (default: the active one, loaded and checked, with the model
    that splits string fields into digits under "splitter": see DIGITREADER_SPLITTER).

    Example:  digitreader models show
    """
    settings = get_settings()
    if version is None:
        from digitreader.pipeline.recognize import Predictor
        from digitreader.pipeline.split import splitter_model

        p = Predictor.load(None, settings)  # checks the SHA-256 and the model's I/O
        split_path = splitter_model(settings, p.info.path)
        splitter = p if split_path in (None, p.info.path) else Predictor.load(split_path, settings)
        s = splitter.info
        split = {"path": s.path, "sha256": s.sha256, "version": s.version, "arch": s.arch,
                 "precision": s.precision, "runtime_path": s.runtime_path, "setting": settings.splitter}  # fmt: skip
        print_json({**p.info.as_dict(), "metadata": p.info.metadata, "active": True, "splitter": split})
        return
    for m in installed_models(settings):
        if m["version"] == version:
            print_json(m)
            return
    raise NotFoundError(f"no model with version {version!r}", hint="digitreader models list")


@models_app.command("promote")
def promote_cmd(
    version: str = typer.Argument(..., help="The candidate's version (digitreader models list)."),
    force: bool = typer.Option(False, "--force", help="Make it active even if it fails the gate (recorded)."),
) -> None:
    """Make a candidate the active model if it passes the gate: better on the frozen corrected digits,
    at most 0.05 points lost on MNIST test (both models evaluated now on the same frozen set).

    Exit code 0 when promoted, 3 when the gate refused it. Running pipelines and workers pick the
    new model up between documents, without a restart.

    Example:  digitreader models promote 0.2.0-ft1
    """
    from digitreader.registry import promote

    res = promote(get_settings(), version, force=force)
    print_json(res)
    for r in res["reasons"]:
        err.print(f"  {r}")
    err.print(
        f"{version}: "
        + (
            "promoted (forced past the gate)"
            if res["forced"]
            else "promoted"
            if res["promoted"]
            else "NOT promoted: the gate refused it"
        )
    )
    if not res["promoted"]:
        raise typer.Exit(3)


@models_app.command("rollback")
def rollback_cmd() -> None:
    """Retire the active model and make the one that was live before it active again.

    Example:  digitreader models rollback
    """
    from digitreader.registry import rollback

    res = rollback(get_settings())
    print_json(res)
    err.print(f"active model: {res['active']} (retired {res['retired']})")


def register(app: typer.Typer) -> None:
    app.add_typer(models_app)
